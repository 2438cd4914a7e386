"""Evaluation: the memory probe (probe.py, run_probe.py, horizon.py) and the benchmark harness.

Benchmark: tasks/ (synthetic suites, bAbI, LoCoMo, capability) -> items.py; backends.py (floor, window, full,
rag, deltamem, deltamem_rag, deltamem_shuffled) over context.py; runner.py writes JSONL rows, scoring.py and
f1.py score them, report.py / plots.py summarise them. Entry point: `deltamem-agents bench`.
"""
