"""Load a LoRA control (a trained state-free LoRA on the backbone) merged into the weights, for evaluation.

The control answers "is it the state's content or just a fine-tune?": same prompts, no δ-state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_lora_control(model: Any, path: str | Path) -> Any:
    """The backbone with a trained LoRA control merged in (a plain transformers model for evaluation)."""
    from peft import PeftModel

    path = Path(path)
    if (path / "adapter").is_dir():
        path = path / "adapter"
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
