"""Where evaluation data is read from: $DELTAMEM_DATA, else ../shared/data beside the repository (never copied)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    env = os.environ.get("DELTAMEM_DATA")
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[4] / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else Path("..") / "shared" / "data"


def babi_dir(given: str | Path | None = None) -> Path:
    """`given`, else $DELTAMEM_BABI_DIR, else <data root>/babi/en."""
    if given:
        return Path(given)
    env = os.environ.get("DELTAMEM_BABI_DIR")
    return Path(env) if env else data_root() / "babi" / "en"
