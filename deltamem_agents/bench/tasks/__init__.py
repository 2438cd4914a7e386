"""Benchmark tasks: each turns data into `Item`s; `build_items(task, cfg, count_tokens)` is the one entry point.

`limit` caps the items per *cell*: per (distance, condition) for synthetic-distance and -update, per (hops,
condition) for synthetic-vartrack, per number of
facts for synthetic-capacity, per (bAbI task, condition) for babi and capability, per (conversation, category)
for LoCoMo, per distance (number of facts for openset-multi) for the open-set suites. Without a limit, the
synthetic, open-set, bAbI and capability suites use `default_limit` items per cell (openset-hand at most its 48
probes) and LoCoMo uses every question.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..items import Item

logger = logging.getLogger(__name__)

TASKS = ("synthetic-distance", "synthetic-capacity", "synthetic-update", "synthetic-vartrack", "babi", "locomo",
         "capability", "openset-distance", "openset-newrel", "openset-hand", "openset-tool", "openset-multi")


@dataclass(frozen=True)
class TaskConfig:
    limit: int | None = None
    seed: int = 0
    full_budget: int = 8192  # the in-window conditions and the `full` backend use this budget
    distances: tuple[int, ...] = (0, 250, 500, 1000, 2000, 4000)
    n_facts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    capacity_distance: int = 500  # tokens of history after the asked fact (synthetic-capacity)
    update_distances: tuple[int, ...] = (250, 1000)
    vartrack_hops: tuple[int, ...] = (0, 1, 2, 3)  # chain links between the stated code and the asked locker
    vartrack_distance: int = 500  # tokens of history after the last link (synthetic-vartrack)
    conditions: tuple[str, ...] = ("in_window", "out_of_window")  # synthetic-distance / -update / -vartrack
    value_kinds: tuple[str, ...] | None = None  # synthetic-distance / -update: only answers of these value kinds
    babi_dir: str | None = None
    babi_filler: int = 1000  # tokens of chit-chat pushing the story out of the window
    locomo_path: str | None = None
    default_limit: int = 50
    openset_distances: tuple[int, ...] = (500, 2000)  # openset-distance / -newrel / -hand: tokens after the fact
    openset_tool_distance: int = 1000  # openset-tool: tokens after the tool's result
    openset_n_facts: tuple[int, ...] = (3, 4, 5, 6, 7, 8)  # openset-multi: facts in one history
    openset_multi_distance: int = 500  # openset-multi: tokens after the last fact

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if self.full_budget < 64:
            raise ValueError("full_budget must be >= 64")
        bad = set(self.conditions) - {"in_window", "out_of_window"}
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of in_window, out_of_window (got {bad or 'none'}"
                             ")")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_items(task: str, cfg: TaskConfig, count: Callable[[str], int]) -> list[Item]:
    """All items of `task` (deterministic for a given config)."""
    from .babi import babi_items, capability_items
    from .locomo import locomo_items
    from .openset import openset_items
    from .paths import babi_dir
    from .synthetic import capacity_items, distance_items, update_items, vartrack_items

    n = cfg.limit or cfg.default_limit
    if task == "synthetic-distance":
        return distance_items(list(cfg.distances), n, cfg.seed, count, cfg.full_budget, cfg.conditions,
                              cfg.value_kinds)
    if task == "synthetic-capacity":
        return capacity_items(list(cfg.n_facts), n, cfg.seed, count, cfg.full_budget, cfg.capacity_distance,
                              value_kinds=cfg.value_kinds)
    if task == "synthetic-update":
        return update_items(list(cfg.update_distances), n, cfg.seed, count, cfg.full_budget, cfg.conditions,
                            cfg.value_kinds)
    if task == "synthetic-vartrack":
        return vartrack_items(list(cfg.vartrack_hops), n, cfg.seed, count, cfg.full_budget, cfg.vartrack_distance,
                              cfg.conditions)
    if task == "babi":
        return babi_items(n, cfg.seed, count, cfg.full_budget, babi_dir(cfg.babi_dir), cfg.babi_filler)
    if task == "capability":
        return capability_items(n, cfg.seed, count, cfg.full_budget, babi_dir(cfg.babi_dir))
    if task in ("openset-distance", "openset-newrel", "openset-hand"):
        return openset_items(task, list(cfg.openset_distances), n, cfg.seed, count)
    if task == "openset-tool":
        return openset_items(task, [cfg.openset_tool_distance], n, cfg.seed, count)
    if task == "openset-multi":
        return openset_items(task, list(cfg.openset_n_facts), n, cfg.seed, count, cfg.openset_multi_distance)
    if task == "locomo":
        return locomo_items(cfg.locomo_path, limit=cfg.limit, seed=cfg.seed)
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
