"""The δ-mem math, torch only (no transformers): the gated delta-rule scan (scan.py: a naive step-by-step
reference and the exact chunked form), the state container (state.py), the per-layer write/read projections
and low-rank corrections (memory.py), message segments for SSW (segments.py) and the configuration (config.py).
"""
