"""`deltamem-agents import-adapter`: convert a released upstream δ-mem adapter into this package's format."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def import_adapter(src: Path = typer.Argument(..., help="dir with delta_mem_config.json and delta_mem_adapter.pt"),
                   out: Path = typer.Option(..., "--out", help="the converted adapter dir"),
                   model: Optional[str] = typer.Option(None, help="the backbone it was trained for: a local HF model "
                                                                  "dir (default: the offline SmolLM2-135M-Instruct)")):
    """Read an upstream adapter (weights-only torch.load), map its config and tensors, refuse settings this package
    does not implement (naming them), and write adapter_config.json + adapter.safetensors."""
    from ..backbone import load_backbone
    from ..errors import DeltaMemError
    from ..patching.upstream import import_upstream_adapter

    backbone, _ = load_backbone(model)
    try:
        typer.echo(str(import_upstream_adapter(src, out, backbone)))
    except (DeltaMemError, FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
