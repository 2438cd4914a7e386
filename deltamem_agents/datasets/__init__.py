"""Seeded, download-free conversation datasets for training and evaluating δ-mem adapters.

* :mod:`.episode` — the :class:`Episode` record (history, question, gold answer, fact index).
* :mod:`.synthetic` — personal-fact / update / tool / multi-fact generators (Faker is imported lazily,
  only when an episode is generated); templates live in :mod:`.templates`, :mod:`.tool_templates`,
  :mod:`.pools`, and chit-chat distractors in :mod:`.distractors`.
* :mod:`.babi` — bAbI v1.2 reader (files read in place from ``$DELTAMEM_BABI_DIR`` or a path).

Importing this package is cheap (standard library only).
"""

from .babi import babi_episodes, read_babi
from .episode import Episode, approx_tokens
from .synthetic import generate, make_fact_episode, make_in_window_episode, make_multi_fact_episode
from .templates import template_inventory

__all__ = [
    "Episode",
    "approx_tokens",
    "babi_episodes",
    "generate",
    "make_fact_episode",
    "make_in_window_episode",
    "make_multi_fact_episode",
    "read_babi",
    "template_inventory",
]
