"""Bootstrap statistics: 95% intervals for a mean and for paired differences between conditions."""

from __future__ import annotations

import random
from typing import Sequence


def bootstrap_ci(xs: Sequence[float], *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
                 ) -> tuple[float, float, float]:
    """(mean, low, high) of the mean by percentile bootstrap."""
    if not xs:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return sum(xs) / n, means[int(alpha / 2 * n_boot)], means[int((1 - alpha / 2) * n_boot) - 1]


def paired_diff_ci(a: Sequence[float], b: Sequence[float], **kw) -> tuple[float, float, float]:
    """Mean of a−b over paired items with its bootstrap interval."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    return bootstrap_ci([x - y for x, y in zip(a, b)], **kw)
