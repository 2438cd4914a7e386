"""Supervised training of the δ-mem adapter on a frozen backbone (CPU-friendly, resumable).

One episode = the runtime's forward passes (runtime/replay.py): state-building epochs over the history that
the window has evicted, then the final window + question + answer with the loss on the answer only.
Only δ-mem parameters train (checked). By default the write epochs use a truncated gradient (the state's
graph to the δ-mem parameters is kept, the backbone activations are not), which makes an episode cost about
one no-grad pass over the history plus one backward over the window. Every `diag_every` steps the trainer
logs the *memory gap*: answer loss with a state from another episode minus loss with the episode's own
state. Only that gap is memory; a falling loss with a flat gap is a task fine-tune (prior-experiment docs).

Runs in one process or data-parallel under `accelerate launch` (train/distributed.py): the global batch is
`grad_accum` episodes whatever the number of processes; only the main process writes logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.config import DeltaMemConfig
from ..core.memory import TASK_PATH_PARAMS
from ..core.state import DeltaState
from ..datasets.counterfactual import counterfactual, supports_counterfactual
from ..datasets.episode import Episode, answer_text
from ..patching import attach, forward_with_state
from ..patching.adapter_io import save_adapter
from ..patching.attach import DeltaMemAdapter
from ..runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from ..runtime.window import WindowPolicy
from .checkpoint import load_checkpoint, save_checkpoint
from ..runtime.replay import IGNORE, EpisodePasses, build_passes
from .gates import fact_messages, gate_loss, superseded_token_labels, token_gate_loss, value_token_labels
from ..datasets.sampler import EpisodeSampler
from .preserve import chat_draw, chat_ending, preserve_kl
from .distributed import EpisodeLoss, gather_list, local_micros, main_decides, make_accelerator
from .writes import WRITES, select_writes

logger = logging.getLogger(__name__)


def _f(default: Any, help: str) -> Any:
    """A config field with a default and the help text of its command-line option."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the `train` command's options and defaults are generated from it."""

    out_dir: str = _f("runs/adapter", "run directory: checkpoint-last/, log.jsonl, train_config.json")
    steps: int = _f(1500, "optimizer steps (the schedule's length)")
    grad_accum: int = _f(8, "episodes per optimizer step (the global batch: split over the processes)")
    lr: float = 1e-3
    warmup_frac: float = 0.05
    lr_schedule: str = _f("cosine", "cosine (decay to 0 after the warm-up) | constant (flat after the warm-up)")
    weight_decay: float = 0.0
    max_grad_norm: float = _f(1.0, "gradient clipping (<= 0: none; the norm is still logged)")
    seed: int = 0
    bf16: bool | None = _f(None, "bf16 backbone weights (fast on GPUs and CPUs with bf16 units, several times "
                                 "slower on CPUs without them); unset: the device policy's choice")
    write_grad: str = _f("truncated", "truncated (write pass without backbone activations) | full")
    delta: dict[str, Any] = field(default_factory=lambda: {"write_granularity": "message_mean",
                                                           "beta_bias_init": -3.0})
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    contrast_weight: float = _f(0.0, "memory contrast: relu(margin - (CE with another episode's state - CE with "
                                     "the own state)); rewards answers that depend on the state's content")
    contrast_margin: float = 1.0
    counterfactual: bool = _f(False, "train fact episodes beside twins whose asked value differs; the contrast "
                                     "reads each twin's question with the other's state")
    recency_weight: float = _f(0.0, "update episodes: relu(margin - (CE of the old value's answer - CE of the new "
                                    "one)), same state: the newer value must win")
    recency_margin: float = 1.0
    gate_weight: float = _f(0.0, "write-gate supervision: messages (or tokens) that carry a fact value -> gate_hi, "
                                 "others -> gate_lo")
    gate_hi: float = 0.5
    gate_lo: float = 0.02
    gate_level: str = _f("message", "message (SSW messages' mean gate) | token (token writes: the value's tokens "
                                    "vs every other token)")
    gate_superseded_weight: float = _f(0.0, "token gates: weight of an update's re-mentions of the old value as "
                                            "negatives of their own (0: among the other negatives)")
    freeze_gates: bool = _f(False, "keep the write gates as initialised (needs gate_weight 0)")
    writes: str = _f("runtime", "runtime (the session runtime's writes) | value_only (only the asked value's "
                                "tokens, nothing in the final pass; token writes)")
    preserve_weight: float = _f(0.0, "KL(backbone || δ-mem) on the final pass's non-answer tokens: a state leaves "
                                     "text it is not about unchanged")
    chat_frac: float = _f(0.0, "share of episodes ending in a chit-chat question, trained on the preservation KL "
                               "of the whole reply (needs preserve_weight)")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sampler: dict[str, Any] = field(default_factory=dict)  # EpisodeSampler keyword arguments
    ckpt_every_min: float = _f(10.0, "minutes between checkpoints")
    diag_every: int = _f(25, "steps between held-out diagnostics")
    diag_episodes: int = 8
    diag_budget: int = 256
    diag_distance: int = 400
    calibration_episodes: int = _f(16, "training episodes whose written tokens set the input centres")
    init_adapter: str | None = _f(None, "start from this adapter (or checkpoint dir) in its own config, with a "
                                        "fresh optimizer, unless resuming")
    max_minutes: float | None = _f(None, "stop (with a checkpoint) after this many minutes")
    stop_at: int | None = _f(None, "pause after this step (checkpoint saved; the schedule is still that of steps)")
    snapshot_every: int = _f(0, "also keep the adapter of every N-th step in OUT_DIR/adapter-step{N} (0 = none)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def init_adapter_weights(adapter: DeltaMemAdapter, tensors: dict[str, torch.Tensor]) -> None:
    """Load `tensors` into `adapter` strictly, except that a task path (config.task_rank) the source lacks keeps
    its fresh initialisation (up-projections zero: the loaded adapter's behaviour is unchanged at step 0)."""
    missing, unexpected = adapter.load_state_dict(tensors, strict=False)
    bad = [k for k in missing if not k.endswith(TASK_PATH_PARAMS)] + list(unexpected)
    if bad:
        raise ValueError(f"init adapter does not match the configured adapter: {bad[:5]}")
    if missing:
        logger.info("task path (%d tensors) starts fresh: the init adapter has none", len(missing))


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, math.ceil(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.lr
    prog = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * prog))


def run_passes(model: Any, p: EpisodePasses, *, state: DeltaState | None = None, truncated: bool = True,
               gate_calls: list[Any] | None = None, hidden_out: list[torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, DeltaState, list[torch.Tensor]]:
    """Run an episode's passes; returns (answer loss, answer logits, state entering the final epoch, betas).
    With `gate_calls`, every pass appends (gates with their graph, message ids, state before the pass); with
    `hidden_out`, the final pass's last hidden state [T, d] is appended (for the preservation term)."""
    adapter: DeltaMemAdapter = model.deltamem
    dev = adapter.layers[0].beta_bias.device
    st = state if state is not None else adapter.zero_state(1, dev)
    betas: list[torch.Tensor] = []
    for ids, mids in p.write_passes:
        out = forward_with_state(model, torch.tensor([ids], device=dev), st,
                                 message_ids=torch.tensor([mids], device=dev), skip_lm_head=True,
                                 detach_inputs=truncated, use_cache=False, capture_gates=gate_calls is not None)
        if gate_calls is not None:
            gate_calls.append((out.gates, mids, st))
        st = out.state
        betas += list(out.beta_means.values())
    entering = st
    out = forward_with_state(model, torch.tensor([p.read_ids], device=dev), st,
                             message_ids=torch.tensor([p.read_mids], device=dev), skip_lm_head=True,
                             use_cache=False, capture_gates=gate_calls is not None)
    if gate_calls is not None:
        gate_calls.append((out.gates, p.read_mids, st))
    hidden = out.outputs.last_hidden_state[0]  # [T, d]
    if hidden_out is not None:
        hidden_out.append(hidden)
    labels = torch.tensor(p.labels, device=dev)
    pos = (labels[1:] != IGNORE).nonzero().squeeze(-1)  # predict token t+1 from position t
    logits = model.lm_head(hidden[pos]).float()
    loss = F.cross_entropy(logits, labels[1:][pos])
    return loss, logits, entering, betas


def weight_dtype(bf16: bool | None, device: Any) -> torch.dtype:
    """The frozen weights' dtype in training: bf16/fp32 as asked, else the device policy's (patching/device.py)."""
    if bf16 is not None:
        return torch.bfloat16 if bf16 else torch.float32
    from ..patching.device import resolve_policy

    return torch.bfloat16 if resolve_policy(device=device).dtype == torch.bfloat16 else torch.float32


class Trainer:
    """`accelerator`: an `accelerate.Accelerator` (train/distributed.make_accelerator); default: one for the
    model's device, which is a single process unless launched by `accelerate launch` / `torchrun`."""

    def __init__(self, model: Any, tokenizer: Any, cfg: TrainConfig, accelerator: Any = None) -> None:
        self.model, self.cfg = model, cfg
        device = next(model.parameters()).device
        self.acc = accelerator if accelerator is not None else make_accelerator(device)
        self.micros = local_micros(cfg.grad_accum, self.acc.num_processes, self.acc.process_index)
        # weights cast once, not autocast: autocast re-casts frozen weights on every call (measured 10x slower)
        dtype = weight_dtype(cfg.bf16, device)
        if next(model.parameters()).dtype != dtype:
            model.to(dtype)
        self.out = Path(cfg.out_dir)
        if cfg.writes not in WRITES or cfg.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"writes must be one of {WRITES} and lr_schedule 'cosine' or 'constant'")
        if cfg.chat_frac and not cfg.preserve_weight:
            raise ValueError("chat_frac > 0 trains chat-ending episodes on the preservation KL only: set preserve_weight")
        dcfg = DeltaMemConfig(**cfg.delta)
        if cfg.writes == "value_only" and dcfg.write_granularity != "token":
            raise ValueError("writes='value_only' needs token writes (delta write_granularity='token')")
        if cfg.freeze_gates and cfg.gate_weight:
            raise ValueError("freeze_gates keeps the gates fixed: gate supervision (gate_weight > 0) would do nothing")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # the adapter's initialisation depends on the seed only, in every process
            self.adapter = attach(model, dcfg)
        if cfg.freeze_gates:
            for n, p in self.adapter.named_parameters():
                if n.endswith(("beta_proj", "beta_bias")):
                    p.requires_grad_(False)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(n.startswith("deltamem.") for n in trainable), "backbone must stay frozen"
        self.renderer = ChatRenderer(tokenizer, cfg.system_prompt)
        self.sampler = EpisodeSampler(tokenizer, seed=cfg.seed, total_steps=cfg.steps, **cfg.sampler)
        self.opt = torch.optim.AdamW([p for p in self.adapter.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.step, self.wall = 0, 0.0
        ckpt = self.out / "checkpoint-last"
        if ckpt.is_dir():
            st = load_checkpoint(ckpt, self.adapter, self.opt)
            self.step, self.wall = st["step"], st["wall_seconds"]
            logger.info("resumed from %s at step %d (%.0f s trained so far)", ckpt, self.step, self.wall)
        elif cfg.init_adapter:
            from safetensors.torch import load_file

            from .adapter_files import weights_file

            init_adapter_weights(self.adapter, load_file(str(weights_file(cfg.init_adapter))))
            logger.info("initialised the adapter from %s", cfg.init_adapter)
        elif self.adapter.config.center_inputs:
            from .calibrate import calibrate_input_centers

            cal = [self.sampler.sample(10_000_000 + i, 0) for i in range(cfg.calibration_episodes)]
            calibrate_input_centers(model, [build_passes(ep, self.renderer, pol) for ep, pol in cal])
        self.diag = [self.sampler.heldout(i, budget=cfg.diag_budget, distance=cfg.diag_distance)
                     for i in range(cfg.diag_episodes)]
        # the previous episode's state in this process (the contrast term's negative; with several processes the
        # pairs differ from a single process's, so only contrast-free runs match it step for step)
        self._foreign: DeltaState | None = None
        self._kls: list[float] = []  # this step's preservation KLs (logged)
        self._micro = 0  # the current episode's micro-batch index in the step (seeds the chat-ending draw)
        # data parallel: DDP over the adapter's parameters only (a no-op wrapper in a single process)
        self.episode_loss = self.acc.prepare_model(EpisodeLoss(self.adapter, self._episode_loss),
                                                   device_placement=False)

    def _twin_loss(self, ep: Episode, policy: WindowPolicy) -> tuple[torch.Tensor, dict[str, Any]]:
        twin = counterfactual(ep, int(ep.meta.get("seed", 0)))
        pa, pb = (self._passes(e, policy) for e in (ep, twin))
        trunc = self.cfg.write_grad == "truncated"
        la, sa, ba, ga = self._own(ep, pa)
        lb, sb, bb, gb = self._own(twin, pb)
        total = (la + lb) / 2 + (ga + gb) / 2
        extra: dict[str, Any] = {"gate_loss": ((ga + gb) / 2).item() if self.cfg.gate_weight else None}
        if self.cfg.contrast_weight and pa.write_passes:
            lab = run_passes(self.model, pa.read_only(), state=sb.rebased())[0]
            lba = run_passes(self.model, pb.read_only(), state=sa.rebased())[0]
            gaps = torch.stack([lab - la, lba - lb])
            total = total + self.cfg.contrast_weight * torch.relu(self.cfg.contrast_margin - gaps).mean()
            extra["gap"] = gaps.mean().item()
        if self.cfg.recency_weight and ep.meta.get("old_value"):
            rec = torch.stack([self._recency_gap(ep, policy, la, sa), self._recency_gap(twin, policy, lb, sb)])
            total = total + self.cfg.recency_weight * torch.relu(self.cfg.recency_margin - rec).mean()
            extra["recency_gap"] = rec.mean().item()
        betas = ba + bb
        if self.cfg.sparsity_weight and betas:
            total = total + self.cfg.sparsity_weight * torch.stack(
                [(b - self.cfg.sparsity_target) ** 2 for b in betas]).mean()
        self._foreign = sa.detach().rebased()
        return total, {**extra, "loss": ((la + lb) / 2).item(), "tokens": pa.num_tokens + pb.num_tokens,
                       "in_window": pa.fact_in_window,
                       "beta": torch.stack(betas).mean().item() if betas else None}

    def _recency_gap(self, ep: Episode, policy: WindowPolicy, new_loss: torch.Tensor,
                     state: DeltaState) -> torch.Tensor:
        """CE of the update's old value as the answer minus CE of the new one, read with the same state."""
        p = build_passes(ep, self.renderer, policy, answer=answer_text(ep.meta["old_value"]))
        q = p.read_only()
        old_loss = run_passes(self.model, q, state=state.rebased())[0]
        return old_loss - new_loss

    def _passes(self, ep: Episode, policy: WindowPolicy) -> EpisodePasses:
        """The episode's forward passes with the configured writes (`TrainConfig.writes`)."""
        return select_writes(build_passes(ep, self.renderer, policy), ep, self.renderer, self.cfg.writes)

    def _own(self, ep: Episode, p: EpisodePasses) -> tuple[torch.Tensor, DeltaState, list[torch.Tensor], torch.Tensor]:
        """(answer loss, state entering the final epoch, betas, weighted gate-supervision loss) of one episode."""
        calls: list[Any] | None = [] if self.cfg.gate_weight else None
        hid: list[torch.Tensor] | None = [] if self.cfg.preserve_weight else None
        loss, _, entering, betas = run_passes(self.model, p, truncated=self.cfg.write_grad == "truncated",
                                              gate_calls=calls, hidden_out=hid)
        aux = torch.zeros(())
        if hid:
            kl = preserve_kl(self.model, p, hid[0])
            self._kls.append(kl.item())
            aux = aux + self.cfg.preserve_weight * kl
        g = None
        if calls and self.cfg.gate_level == "token":
            hard = superseded_token_labels(ep, self.renderer) if self.cfg.gate_superseded_weight else None
            g = token_gate_loss(calls, value_token_labels(ep, self.renderer), len(ep.messages), self.cfg.gate_hi,
                                self.cfg.gate_lo, hard, self.cfg.gate_superseded_weight)
        elif calls:
            g = gate_loss(calls, fact_messages(ep), len(ep.messages), self.cfg.gate_hi, self.cfg.gate_lo)
        return loss, entering, betas, aux + (self.cfg.gate_weight * g if g is not None else 0.0)

    def _chat_loss(self, ep: Episode, policy: WindowPolicy, rng: random.Random) -> tuple[torch.Tensor, dict[str, Any]]:
        """The episode's history (a state full of facts) ending in a chit-chat exchange: preservation only."""
        p = self._passes(chat_ending(ep, rng), policy)
        hid: list[torch.Tensor] = []
        run_passes(self.model, p, truncated=self.cfg.write_grad == "truncated", hidden_out=hid)
        kl = preserve_kl(self.model, p, hid[0], include_answer=True)
        return self.cfg.preserve_weight * kl, {"loss": None, "chat_kl": kl.item(), "tokens": p.num_tokens,
                                               "in_window": p.fact_in_window, "beta": None}

    def _episode_loss(self, ep: Episode, policy: WindowPolicy) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.cfg.chat_frac:
            rng = chat_draw(self.cfg.seed, self.step, self._micro, self.cfg.chat_frac)
            if rng is not None:
                return self._chat_loss(ep, policy, rng)
        if self.cfg.counterfactual and supports_counterfactual(ep):
            return self._twin_loss(ep, policy)
        p = self._passes(ep, policy)
        loss, entering, betas, gl = self._own(ep, p)
        total = loss + gl
        extra: dict[str, Any] = {"gate_loss": gl.item() if self.cfg.gate_weight else None}
        if self.cfg.recency_weight and ep.meta.get("old_value") and p.write_passes:
            rec = self._recency_gap(ep, policy, loss, entering)
            total = total + self.cfg.recency_weight * torch.relu(self.cfg.recency_margin - rec)
            extra["recency_gap"] = rec.item()
        foreign = self._foreign
        self._foreign = entering.detach().rebased()
        if self.cfg.contrast_weight and foreign is not None and p.write_passes:
            q = p.read_only()
            shuf = run_passes(self.model, q, state=foreign)[0]
            gap = shuf - loss
            total = total + self.cfg.contrast_weight * torch.relu(self.cfg.contrast_margin - gap)
            extra["gap"] = gap.item()
        if self.cfg.sparsity_weight and betas:
            total = total + self.cfg.sparsity_weight * torch.stack(
                [(b - self.cfg.sparsity_target) ** 2 for b in betas]).mean()
        return total, {**extra, "loss": loss.item(), "tokens": p.num_tokens, "in_window": p.fact_in_window,
                       "beta": torch.stack(betas).mean().item() if betas else None}

    @torch.no_grad()
    def memory_gap(self) -> dict[str, float]:
        """Answer loss with the own state, a state from another episode, and a zero state (held-out set)."""
        own, shuf, zero, cf, kl = [], [], [], [], []
        passes = [self._passes(ep, pol) for ep, pol in self.diag]
        states = [run_passes(self.model, p)[2] for p in passes]
        for i, p in enumerate(passes):
            hid: list[torch.Tensor] = []
            own.append(run_passes(self.model, p, hidden_out=hid)[0].item())
            kl.append(preserve_kl(self.model, p, hid[0]).item())
            other = states[(i + 1) % len(states)].rebased()
            shuf.append(self._final_loss(p, other))
            zero.append(self._final_loss(p, self.adapter.zero_state(1)))
            ep, pol = self.diag[i]
            if supports_counterfactual(ep):  # the twin's state: same relation and words, another value
                twin = self._passes(counterfactual(ep, 7_000 + i), pol)
                cf.append(self._final_loss(p, run_passes(self.model, twin)[2].rebased()))
        m = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        return {"diag_loss": m(own), "diag_loss_shuffled": m(shuf), "diag_loss_zero": m(zero),
                "diag_loss_counterfactual": m(cf), "memory_gap": m(shuf) - m(own),
                "counterfactual_gap": m(cf) - m(own), "diag_preserve_kl": m(kl)}

    def _final_loss(self, p: EpisodePasses, state: DeltaState) -> float:
        q = p.read_only()
        return run_passes(self.model, q, state=state)[0].item()

    def _accumulate(self) -> tuple[list[dict[str, Any]], list[float]]:
        """Forward and backward over this process's micro-batches of the step; the last backward synchronises
        the gradients (DDP); returns every process's episode stats and preservation KLs, in micro order."""
        stats: list[dict[str, Any]] = []
        self._kls = []
        last = self.micros[-1]
        for micro in self.micros:
            self._micro = micro
            ep, policy = self.sampler.sample(self.step, micro)
            if micro == last:
                loss, st = self.episode_loss(ep, policy)
                (loss / len(self.micros)).backward()
            else:
                with self.acc.no_sync(self.episode_loss):
                    loss, st = self.episode_loss(ep, policy)
                    (loss / len(self.micros)).backward()
            stats.append(st)
        return gather_list(stats), gather_list(self._kls)

    def train(self) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(cfg.to_json())
        log = (self.out / "log.jsonl").open("a") if main else None
        last_ckpt = time.monotonic()
        t_start = time.monotonic()
        end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
        bar = tqdm(total=end, initial=self.step, desc="train δ-mem", dynamic_ncols=True, disable=not main)
        while self.step < end:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            stats, kls = self._accumulate()
            clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), clip).item()
            self.opt.step()
            self.step += 1
            dt = time.perf_counter() - t0
            self.wall += dt
            if main:
                row = self._row(lr, gnorm, dt, stats, kls)
                assert log is not None
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss'] if row['loss'] is not None else float('nan'):.3f}",
                                gap=f"{row.get('memory_gap') or float('nan'):.3f}")
                if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                    save_adapter(self.adapter, self.out / f"adapter-step{self.step}", info=self._info())
            done = self.step >= end
            now = time.monotonic()
            out_of_time, due = main_decides(cfg.max_minutes is not None and now - t_start > 60 * cfg.max_minutes,
                                            now - last_ckpt > 60 * cfg.ckpt_every_min)
            if done or out_of_time or due:
                if main:
                    self.save()
                self.acc.wait_for_everyone()
                last_ckpt = time.monotonic()
            if out_of_time:
                logger.info("stopping after %.1f min (max_minutes); resume with the same command", cfg.max_minutes)
                break
        bar.close()
        if log is not None:
            log.close()

    def _row(self, lr: float, gnorm: float, dt: float, stats: list[dict[str, Any]], kls: list[float],
             ) -> dict[str, Any]:
        """One line of log.jsonl: the step's stats over the global batch, and the diagnostics when due."""
        row: dict[str, Any] = {
            "step": self.step, "lr": lr, "grad_norm": gnorm, "seconds": dt, "wall_seconds": self.wall,
            "loss": _mean([s["loss"] for s in stats]),
            "loss_out_of_window": _mean([s["loss"] for s in stats if not s["in_window"]]),
            "loss_in_window": _mean([s["loss"] for s in stats if s["in_window"]]),
            "chat_kl": _mean([s.get("chat_kl") for s in stats]),
            "beta": _mean([s["beta"] for s in stats]), "tokens": sum(s["tokens"] for s in stats),
            "train_gap": _mean([s.get("gap") for s in stats]),
            "gate_loss": _mean([s.get("gate_loss") for s in stats]),
            "recency_gap": _mean([s.get("recency_gap") for s in stats]),
            "preserve_kl": _mean(kls),
            "bias_mean": torch.stack([layer.beta_bias.mean() for layer in self.adapter.layers]).mean().item(),
        }
        if self.cfg.diag_every and (self.step % self.cfg.diag_every == 0 or self.step == 1):
            row.update(self.memory_gap())  # main process only; the others wait at the next synchronisation
        return row

    def _info(self) -> dict[str, Any]:
        return {"train_config": asdict(self.cfg), "steps": self.step, "wall_seconds": round(self.wall, 1),
                "threads": torch.get_num_threads(), "processes": self.acc.num_processes}

    def save(self) -> Path:
        return save_checkpoint(self.out, self.adapter, self.opt, {"step": self.step, "wall_seconds": self.wall},
                               self._info())


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return sum(xs) / len(xs) if xs else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
