"""Data-parallel training with Hugging Face `accelerate`: one process per device, DDP over the adapter only.

    accelerate launch --num_processes 2 -m deltamem_agents.cli train ...              # 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m deltamem_agents.cli train --threads 1 ...   # CPU (gloo)

The global batch is `TrainConfig.grad_accum` episodes per optimizer step, whatever the number of processes:
process r of N runs the micro-batches [r*L, (r+1)*L) with L = grad_accum / N (the sampler maps each
(step, micro) to one seeded episode), so N processes see the same episodes per step as one.

DDP wraps a module whose only parameters are the δ-mem adapter's; the frozen backbone is called inside its
forward but is neither registered with DDP nor broadcast. Each micro-batch loss is divided by L and DDP
averages over N, so the synchronised gradient is the mean over the global batch, as in one process.
`find_unused_parameters=True` because an episode need not reach every adapter parameter (an in-window episode
writes nothing, the task path may be absent from a graph).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def make_accelerator(device: Any = None) -> Any:
    """An `Accelerator` for this process: gloo on CPU-only machines (or when `device` is a CPU), NCCL on CUDA.
    Mixed precision stays off: the trainer casts the frozen weights itself (autocast would re-cast them on every
    call) and keeps the adapter in fp32.

    accelerate keeps one process state: a later call in the same process (another trainer) reuses it, whatever
    its `device` (a single process never uses the accelerator's device; launched processes make one call)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import PartialState

    on_cpu = not torch.cuda.is_available() if device is None else torch.device(device).type == "cpu"
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    fresh = not PartialState._shared_state
    return Accelerator(cpu=on_cpu and fresh, mixed_precision="no", kwargs_handlers=[ddp])


def local_micros(grad_accum: int, num_processes: int, process_index: int) -> range:
    """This process's share of the global batch: micro-batch indices [r*L, (r+1)*L), L = grad_accum / N."""
    if grad_accum % num_processes:
        raise ValueError(f"grad_accum ({grad_accum}, the global batch) must be a multiple of the number of "
                         f"processes ({num_processes})")
    per = grad_accum // num_processes
    return range(process_index * per, (process_index + 1) * per)


class EpisodeLoss(torch.nn.Module):
    """DDP's module: holds the adapter (the synchronised parameters); forward = one episode's loss.

    `loss_fn(episode, policy)` runs the backbone with the adapter attached and returns (loss, stats)."""

    def __init__(self, adapter: torch.nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, Any]]]) -> None:
        super().__init__()
        self.adapter = adapter
        self._loss_fn = loss_fn

    def forward(self, episode: Any, policy: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._loss_fn(episode, policy)


def gather_list(items: list[Any]) -> list[Any]:
    """Concatenate every process's `items` in process order (the same list in a single process)."""
    from accelerate.utils import gather_object

    return list(gather_object(items))


def main_decides(*flags: bool) -> list[bool]:
    """The main process's values of `flags` on every process (decisions taken on wall-clock time must agree)."""
    from accelerate.utils import broadcast_object_list

    return list(broadcast_object_list(list(flags), from_process=0))


__all__ = ["EpisodeLoss", "gather_list", "local_micros", "main_decides", "make_accelerator"]
