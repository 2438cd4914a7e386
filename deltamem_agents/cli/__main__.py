"""`python -m deltamem_agents.cli ...` runs the console script."""

from . import app

app()
