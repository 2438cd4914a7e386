"""Deterministic episode + window-policy sampling for training, with a distance curriculum.

Each (step, micro) pair maps to one seeded episode, so a resumed run sees exactly the data it would have
seen. Out-of-window episodes get a small window budget and a fact placed further back than the window
holds (distances grow over the first `curriculum_frac` of training); in-window episodes (design: the
runtime's behaviour while a conversation still fits) get a budget that holds the whole conversation.
"""

from __future__ import annotations

import logging
import random
from functools import cached_property
from typing import Any

from .episode import Episode
from .synthetic import first_of_kinds, generate
from ..runtime.window import WindowPolicy

logger = logging.getLogger(__name__)


class EpisodeSampler:
    def __init__(self, tokenizer: Any, *, seed: int = 0, total_steps: int = 1000,
                 mix: dict[str, float] | None = None, budget_range: tuple[int, int] = (160, 448),
                 distance_start: int = 150, distance_end: int = 1500, curriculum_frac: float = 0.6,
                 in_window_frac: float = 0.2, in_window_max_distance: int = 500, reserve: int = 48,
                 babi_dir: str | None = None, split: str = "train", value_kinds: list[str] | None = None) -> None:
        self.tok = tokenizer
        self.seed, self.total = seed, total_steps
        self.mix = mix or {"fact": 0.45, "update": 0.15, "multi": 0.15, "tool": 0.1, "babi": 0.15}
        self.budget_range, self.reserve = tuple(budget_range), reserve
        self.d0, self.d1, self.cfrac = distance_start, distance_end, curriculum_frac
        self.in_window_frac, self.in_window_max = in_window_frac, in_window_max_distance
        self.babi_dir, self.split = babi_dir, split
        self.value_kinds = set(value_kinds) if value_kinds else None  # curriculum: only these answer kinds

    def generate_one(self, seed: int, split: str, **kw: Any) -> Episode:
        """One episode; with `value_kinds`, the first of a seeded sequence whose asked value is of those kinds."""
        if self.value_kinds is None:
            return generate(1, seed=seed, split=split, count_tokens=self.count_tokens, **kw)[0]
        return first_of_kinds(seed, split, self.value_kinds, count_tokens=self.count_tokens, **kw)

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    @cached_property
    def babi(self) -> list[Episode]:
        from ..datasets.babi import babi_episodes

        try:
            return babi_episodes(self.babi_dir, split="train", max_items=300, seed=self.seed)
        except FileNotFoundError as exc:
            logger.warning("bAbI disabled: %s", exc)
            return []

    def span(self, step: int) -> int:
        prog = min(1.0, step / max(1.0, self.cfrac * self.total))
        return int(self.d0 + prog * (self.d1 - self.d0))

    def sample(self, step: int, micro: int) -> tuple[Episode, WindowPolicy]:
        rng = random.Random(f"sampler:{self.seed}:{step}:{micro}")
        ep_seed = rng.randrange(2**31)
        if rng.random() < self.in_window_frac:
            dist = rng.randint(0, self.in_window_max)
            ep = self.generate_one(ep_seed, self.split, mix={"fact": 0.6, "update": 0.2, "multi": 0.2},
                                distance_range=(dist, dist))
            return ep, WindowPolicy(budget=8192, reserve=self.reserve)
        budget = rng.randint(*self.budget_range)
        policy = WindowPolicy(budget=budget, reserve=self.reserve)
        kinds = [k for k in self.mix if k != "babi" or self.babi]
        kind = rng.choices(kinds, [self.mix[k] for k in kinds])[0]
        if kind == "babi":
            return rng.choice(self.babi), policy
        lo = int(0.6 * budget)
        dist = rng.randint(lo, lo + self.span(step))
        ep = self.generate_one(ep_seed, self.split, mix={kind: 1.0}, distance_range=(dist, dist))
        return ep, policy

    def heldout(self, i: int, *, budget: int = 256, distance: int = 400) -> tuple[Episode, WindowPolicy]:
        """Fixed held-out diagnostic episodes (held-out templates and seeds), fact outside the window."""
        ep = self.generate_one(10_000 + i, "heldout", mix={"fact": 1.0}, distance_range=(distance, distance))
        return ep, WindowPolicy(budget=budget, reserve=self.reserve)
