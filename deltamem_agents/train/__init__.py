"""Training an adapter on a frozen backbone: trainer.py (episodes replayed exactly as the runtime runs them,
resumable checkpoints), the loss terms (gates.py: write-gate supervision, preserve.py: KL to the backbone,
writes.py: which tokens an episode writes), calibrate.py (input centres) and checkpoint / adapter-file helpers.
Entry point: `deltamem-agents train`; docs/training.md walks through a recipe.
"""
