"""`python -m lab ...` runs the lab command line."""

from lab.cli import app

app()
