"""Attach δ-mem to Hugging Face models: wrappers, per-call state plumbing, adapter I/O."""

from .attach import DeltaMemAdapter, attach, detach, get_adapter, is_attached
from .context import disabled
from .forward import StepOutput, forward_with_state

__all__ = ["DeltaMemAdapter", "StepOutput", "attach", "detach", "disabled", "forward_with_state", "get_adapter",
           "is_attached"]
