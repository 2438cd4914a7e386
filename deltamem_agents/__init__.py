"""deltamem-agents: δ-mem online memory for frozen local LLMs.

Importing the package is cheap: torch, transformers and the frameworks load only when a submodule needs them.
"""

__version__ = "0.1.0"
