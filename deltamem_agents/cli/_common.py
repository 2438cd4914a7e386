"""Small parsers and the logging set-up shared by the command-line modules."""

from __future__ import annotations

import logging


def ints(text: str) -> tuple[int, ...]:
    """'160,448' -> (160, 448)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def names(text: str) -> tuple[str, ...]:
    """'colour, food' -> ('colour', 'food')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def mix(text: str) -> dict[str, float] | None:
    """'fact=0.6,update=0.2' -> {'fact': 0.6, 'update': 0.2}; '' -> None (the sampler's default mix)."""
    pairs = [x.split("=") for x in text.split(",") if x.strip()]
    return {k.strip(): float(v) for k, v in pairs} if pairs else None


def log_progress() -> None:
    """Our INFO lines (rows done, checkpoints) on stderr; other libraries' (faiss, ...) only from WARNING."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("deltamem_agents").setLevel(logging.INFO)
