"""`deltamem-agents train`: its options are generated from the configs, so every default lives in one place.

- every scalar field of `TrainConfig` is an option with the dataclass's default (`--steps`, `--lr`, `--writes`, ...);
- every scalar field of `DeltaMemConfig` is an option of the adapter's shape (`--rank`, `--write-granularity`, ...),
  unset by default: then `TrainConfig.delta`'s value, else `DeltaMemConfig`'s, else (with `--init-adapter`) the
  initial adapter's own config applies;
- every keyword of `EpisodeSampler` is a data option (`--mix fact=0.6,update=0.4`, `--budget-range 160,448`, ...),
  with the sampler's default.
Help texts come from the dataclass fields' `metadata["help"]`.

Data-parallel: `accelerate launch --num_processes N -m deltamem_agents.cli train ...` (on GPUs; on a CPU-only
machine add `--multi_gpu`, which there starts N gloo processes); train/distributed.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any, Callable, Optional

import typer

from ._common import log_progress, mix, names

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "bool | None": Optional[bool],
                          "int | None": Optional[int],
                          "float | None": Optional[float], "str | None": Optional[str]}
# alternative spellings kept for the options of the adapter's shape
_DELTA_ALIASES = {"write_granularity": "--granularity", "num_state_heads": "--heads",
                  "state_update_mode": "--update-mode"}
_SAMPLER_SKIP = ("tokenizer", "seed", "total_steps", "split")  # given by TrainConfig / the trainer
_DELTA_SKIP = ("delta_heads", "extra")
_TRAIN_SKIP = ("delta", "sampler")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _train_params() -> list[inspect.Parameter]:
    from ..train.trainer import TrainConfig

    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _TRAIN_SKIP:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = _TYPES[str(f.type)]
        flag = tp in (bool, Optional[bool])
        decls = [f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}"] if flag else [_flag(f.name)]
        opt = typer.Option(default, *decls, help=f.metadata.get("help", ""), rich_help_panel="Training")
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=tp))
    return out


def _delta_params() -> list[inspect.Parameter]:
    from ..core.config import DeltaMemConfig

    out = []
    for f in dataclasses.fields(DeltaMemConfig):
        if f.name in _DELTA_SKIP:
            continue
        if f.name == "target_layers":
            tp, hint = Optional[str], "layer ids, e.g. 10-29,31 (default: every layer)"
        else:
            base = _TYPES[str(f.type)]
            tp, hint = Optional[base], f"default {f.default!r}"
        if tp is Optional[bool]:
            decls = [f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}"]
        else:
            decls = [_flag(f.name)] + ([_DELTA_ALIASES[f.name]] if f.name in _DELTA_ALIASES else [])
        opt = typer.Option(None, *decls, help=f.metadata.get("help", hint), rich_help_panel="Adapter shape")
        out.append(inspect.Parameter(f"delta_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=tp))
    return out


def _sampler_params() -> list[inspect.Parameter]:
    from ..datasets.sampler import EpisodeSampler

    out = []
    for p in inspect.signature(EpisodeSampler.__init__).parameters.values():
        if p.name in ("self", *_SAMPLER_SKIP):
            continue
        d = p.default
        if isinstance(d, tuple):
            default, tp, hint = ",".join(map(str, d)), str, "comma-separated"
        elif p.name == "mix":
            default, tp, hint = "", str, "episode kinds, e.g. fact=0.6,update=0.2,multi=0.2 ('' = the default mix)"
        elif p.name == "value_kinds":
            default, tp, hint = "", str, "only answers of these kinds, e.g. colour,food,sport,drink ('' = all)"
        elif d is None:
            default, tp, hint = None, Optional[str], ""
        else:
            default, tp, hint = d, type(d), ""
        opt = typer.Option(default, _flag(p.name), help=hint, rich_help_panel="Data")
        out.append(inspect.Parameter(f"sampler_{p.name}", inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=tp))
    return out


def _run(threads: int, backbone: str, device: Optional[str], **kw: Any) -> None:
    import torch

    from ..backbone import load_backbone
    from ..core.config import parse_layer_spec
    from ..datasets.sampler import EpisodeSampler
    from ..train.distributed import make_accelerator
    from ..train.trainer import TrainConfig, Trainer

    acc = make_accelerator(device)
    log_progress()
    if not acc.is_main_process:  # one process reports
        logging.getLogger("deltamem_agents").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    train = {k: v for k, v in kw.items() if not k.startswith(("delta_", "sampler_"))}
    delta = {k[6:]: v for k, v in kw.items() if k.startswith("delta_") and v is not None}
    if "target_layers" in delta:
        delta["target_layers"] = list(parse_layer_spec(delta["target_layers"]))
    if train.get("init_adapter"):
        from ..train.adapter_files import delta_from_adapter

        delta = delta_from_adapter(train["init_adapter"], **delta)
    else:
        delta = {**TrainConfig().delta, **delta}
    defaults = inspect.signature(EpisodeSampler.__init__).parameters
    sampler: dict[str, Any] = {}
    for k, v in kw.items():
        if not k.startswith("sampler_"):
            continue
        name = k[8:]
        if isinstance(defaults[name].default, tuple):
            v = tuple(type(defaults[name].default[0])(x) for x in names(v))
        elif name == "mix":
            v = mix(v)
        elif name == "value_kinds":
            v = list(names(v)) or None
        sampler[name] = v
    cfg = TrainConfig(**train, delta=delta, sampler=sampler)
    dtype = None if cfg.bf16 is None else ("bfloat16" if cfg.bf16 else "float32")
    if acc.num_processes > 1:  # launched: this process's own device (cuda:LOCAL_RANK, or the CPU with gloo)
        device = str(acc.device)
    model, tok = load_backbone(None if backbone == "default" else backbone, device=device, dtype=dtype)
    Trainer(model, tok, cfg, accelerator=acc).train()


def make_train_command() -> Callable[..., None]:
    def train(**kw: Any) -> None:
        """Train (or resume) a δ-mem adapter on a frozen backbone; checkpoints in OUT_DIR/checkpoint-last.

        docs/training.md walks through the recipe of the shipped adapter."""
        _run(**kw)

    extra = [inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                               default=typer.Option(2, help="CPU threads (torch.set_num_threads)")),
             inspect.Parameter("backbone", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                               default=typer.Option("default", "--backbone", "--model",
                                                    help="'default' (offline SmolLM2-135M) or a local HF model dir")),
             inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                               default=typer.Option(None, help="cuda, cuda:1 or cpu (default: CUDA when available; "
                                                               "under accelerate launch, each process's own GPU, "
                                                               "or gloo on the CPU with --device cpu)"))]
    train.__signature__ = inspect.Signature(_train_params() + _delta_params() + _sampler_params() + extra)
    train.__annotations__ = {}
    return train


__all__ = ["make_train_command"]
