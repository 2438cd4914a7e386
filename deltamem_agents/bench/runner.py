"""Run tasks × backends into one JSONL file (one row per question and backend), resumably.

    from deltamem_agents.bench.runner import BenchConfig, run_bench
    run_bench(BenchConfig(out=Path("runs/bench/quick"), tasks=("synthetic-distance",), limit=2))

Rows already in `<out>/rows.jsonl` (same task, item id and backend) are skipped, so an interrupted run
continues where it stopped. `<out>/config.json` records the settings that change answers (budget, adapter,
seed, ...); resuming with different ones is refused rather than mixing incomparable rows. All backends of
one item run back to back, so its δ-states and embeddings are computed once.

Costs in a row: `latency_s` = answering with the memory already built (retrieval query + a cold prefill of
the prompt read + greedy decoding); `prep_s` = building the memory for this item when it was not cached yet
(writing the evicted history into a δ-state, embedding the evicted messages). A conversation's memory is
built once and reused by all its questions, so `prep_s` is 0 for the later ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from .backends import BACKENDS, NEEDS_ADAPTER
from .items import Item
from .report import LORA_PREFIX, read_rows
from .rowlock import exclusive_rows
from .tasks import TASKS, TaskConfig, build_items

logger = logging.getLogger(__name__)
ROWS = "rows.jsonl"
CONFIG = "config.json"
_RESUME_KEYS = ("budget", "reserve", "adapter", "model", "lora", "rag_k", "rag_share", "rag_scope", "max_new_tokens")
_TASK_RESUME_KEYS = ("seed", "full_budget", "capacity_distance", "babi_filler", "locomo_path", "value_kinds")


@dataclass(frozen=True)
class BenchConfig:
    out: Path
    tasks: tuple[str, ...] = TASKS
    backends: tuple[str, ...] = tuple(BACKENDS)
    budget: int = 512  # visible-token budget shared by every backend (out-of-window conditions)
    reserve: int = 48  # tokens of the budget kept free for the reply
    adapter: str = "default"  # adapter dir | "default" (shipped) | "none"
    model: str | None = None  # backbone: a local HF model dir (None: the offline SmolLM2-135M-Instruct)
    lora: str | None = None  # a LoRA control dir (python -m lab train-lora-control): backbone + merged LoRA (+ the adapter,
    #                          if one is given: δ-mem stacked on the LoRA-merged backbone, an exploratory arm)
    rag_k: int = 3
    rag_share: float = 1 / 3  # fraction of the budget given to retrieved messages (rag backends)
    rag_scope: str = "evicted"  # "evicted": RAG searches the messages that left its window; "all": every one
    max_new_tokens: int | None = None  # None: each task's own (synthetic 16, bAbI 12, LoCoMo 32)
    threads: int = 2
    progress: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS] + [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"unknown task/backend {bad}; tasks: {TASKS}; backends: {tuple(BACKENDS)}")
        if self.budget < 64 or not 0 <= self.reserve < self.budget // 2:
            raise ValueError("budget must be >= 64 and reserve < budget / 2")
        if {"rag", "deltamem_rag"} & set(self.backends) and self.budget - int(self.rag_share * self.budget) < 64:
            raise ValueError("the RAG window (budget minus the retrieval share) must keep >= 64 tokens")
        if self.lora and self.adapter in ("none", None) and NEEDS_ADAPTER & set(self.backends):
            raise ValueError("--lora with --adapter none runs the LoRA control without δ-mem: choose backends among "
                             f"{sorted(set(BACKENDS) - NEEDS_ADAPTER)} (or give an adapter to stack on it)")

    def resume_key(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _RESUME_KEYS}, **{k: getattr(self.task, k) for k in _TASK_RESUME_KEYS}}


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{setting: (old, new)} where two runs' resume keys differ (rows of such runs are not comparable)."""
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _check_config(cfg: BenchConfig) -> None:
    path = cfg.out / CONFIG
    key = json.loads(json.dumps(cfg.resume_key(), default=str))  # as stored (tuples become lists)
    if path.exists():
        diff = settings_diff(json.loads(path.read_text()).get("resume_key", {}), key)
        if diff:
            raise ValueError(f"{cfg.out} holds rows made with other settings {diff}; choose another --out")
    conf = {"resume_key": key, **{k: v for k, v in asdict(cfg).items() if k not in ("out", "task")},
            "task": cfg.task.to_dict()}
    path.write_text(json.dumps(conf, indent=1, default=str))


def _items(cfg: BenchConfig, tok: Any) -> Iterator[Item]:
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for task in cfg.tasks:
        for item in build_items(task, cfg.task, count):
            yield item if cfg.max_new_tokens is None else replace(item, max_new_tokens=cfg.max_new_tokens)


def answer(ctx: Any, item: Item, backend: str, name: str | None = None) -> dict[str, Any]:
    """One row: the backend's answer to the item, scored, with cost fields (`name`: the row's backend name)."""
    from .scoring import score

    t0 = time.perf_counter()
    prep = BACKENDS[backend](ctx, item)
    row: dict[str, Any] = {"task": item.task, "item_id": item.item_id, "backend": name or backend, "gold": item.gold,
                           **{k: v for k, v in item.fields.items() if k != "options"}}
    row["history_tokens"] = ctx.history_tokens(item)
    row["budget"] = item.budget or ctx.budget
    if prep.skip:
        return {**row, "skipped": prep.skip, "score": None, "prediction": None}
    raw = ctx.generate(prep, item.max_new_tokens)
    row.update(score(item, raw))
    row.update(prep.fields)
    row.update(latency_s=round(time.perf_counter() - t0 - prep.prep_s, 4), prep_s=round(prep.prep_s, 4),
               prompt_tokens=len(prep.ids), memory_bytes=prep.memory_bytes, memory_kind=prep.memory_kind,
               kv_bytes=ctx.kv_bytes_per_token * len(prep.ids), skipped=None)
    return row


def run_bench(cfg: BenchConfig, *, model: Any = None, tokenizer: Any = None) -> Path:
    """Run (or resume) the benchmark; returns the JSONL path. `model`/`tokenizer` skip loading (tests)."""
    import torch
    from tqdm.auto import tqdm

    from ..patching.attach import is_attached
    from .context import BenchContext

    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    _check_config(cfg)
    if model is None and cfg.lora:  # merged in place: a fresh backbone, not the process-cached one
        from ..backbone import load_backbone
        from ..chat.loading import resolve_adapter
        from ..patching.adapter_io import load_adapter
        from ..patching.lora import load_lora_control

        model, tokenizer = load_backbone(cfg.model)
        model = load_lora_control(model, cfg.lora)
        adir = resolve_adapter(cfg.adapter, cfg.model)
        if adir is not None:
            load_adapter(model, adir)
    elif model is None:
        from ..chat.loading import load_model

        model, tokenizer = load_model(cfg.model, cfg.adapter)
    backends = list(cfg.backends)
    if not is_attached(model) and NEEDS_ADAPTER & set(backends):
        logger.warning("no δ-mem adapter loaded (adapter=%r): skipping the backends %s", cfg.adapter,
                       sorted(NEEDS_ADAPTER & set(backends)))
        backends = [b for b in backends if b not in NEEDS_ADAPTER]
    ctx = BenchContext(model, tokenizer, budget=cfg.budget, reserve=cfg.reserve, full_budget=cfg.task.full_budget,
                       rag_k=cfg.rag_k, rag_share=cfg.rag_share, rag_scope=cfg.rag_scope)
    if {"rag", "deltamem_rag"} & set(backends):
        _ = ctx.retriever.model  # load MiniLM before timing anything
    path = cfg.out / ROWS
    prefix = LORA_PREFIX if cfg.lora else ""
    with exclusive_rows(path):  # one writer: a second run on this dir would write every row twice
        done = {(r["task"], r["item_id"], r["backend"]) for r in read_rows(path)}
        todo = [(it, b) for it in _items(cfg, tokenizer) for b in backends
                if (it.task, it.item_id, prefix + b) not in done]
        logger.info("%d rows done, %d to run", len(done), len(todo))
        with path.open("a") as f, torch.inference_mode():
            for item, backend in tqdm(todo, desc="bench", disable=not cfg.progress, unit="row"):
                row = answer(ctx, item, backend, prefix + backend)
                row.update(adapter=cfg.adapter, lora=cfg.lora, seed=cfg.task.seed)
                f.write(json.dumps(row) + "\n")
                f.flush()
    return path
