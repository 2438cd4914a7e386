"""bAbI (tasks 1, 2, 3, 5, 6, 7, *test* files) and the capability-retention suite as benchmark items.

babi: each story becomes "Story update: ..." user messages with short acknowledgements (datasets.babi), asked
  `in_window` (budget = the full-context budget, the whole story in the prompt, no filler) and `pushed_out`
  (`filler_tokens` of seeded chit-chat appended after the story, run budget, so the story leaves the window).
  Item ids carry the question's position in the test file, so they are stable across limits.
capability: in-window items where no memory is needed, to check that δ-mem does not hurt what the backbone
  can already do: bAbI tasks outside the memory suite (4, 11, 12, 15; stories fully in the prompt) and a
  built-in set of short instruction / general-knowledge questions after a little chit-chat.
"""

from __future__ import annotations

import random
from typing import Callable

from ...datasets.babi import babi_episodes
from ...datasets.distractors import Ctx, faker_for
from ...datasets.episode import Episode, answer_text
from ..items import Item

MEMORY_TASKS = (1, 2, 3, 5, 6, 7)
CAPABILITY_TASKS = (4, 11, 12, 15)
MAX_NEW_TOKENS = 12
INSTRUCTIONS = (  # (question, accepted answers): checked by normalised containment like every short answer
    ("What is the capital of France? Answer with one word.", ("Paris",)),
    ("Reply with only the word: banana", ("banana",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is 2 plus 2? Answer with a number.", ("4", "four")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("Which animal says 'moo'?", ("cow",)),
    ("What is the opposite of hot?", ("cold",)),
    ("Complete the sequence: one, two, three, ...", ("four",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("What do bees make?", ("honey",)),
    ("Translate 'thank you' into French.", ("merci",)),
    ("Spell the word 'cat' in capital letters.", ("CAT",)),
)


def _filler(ep: Episode, tokens: int, seed: int, count: Callable[[str], int]) -> tuple[dict, ...]:
    msgs = [dict(m) for m in ep.messages]
    r = random.Random(f"babi-filler:{seed}")
    Ctx(r, faker_for(r.getrandbits(32)), [ep.meta["value"]]).fill(msgs, len(msgs) - 1, tokens, 0, count)
    return tuple(msgs)


def babi_items(n: int, seed: int, count: Callable[[str], int], full_budget: int, data_dir=None,
               filler_tokens: int = 1000, tasks=MEMORY_TASKS, conditions=("in_window", "pushed_out"),
               name: str = "babi") -> list[Item]:
    items = []
    for task in tasks:
        every = babi_episodes(data_dir, tasks=(task,), split="test", seed=seed)
        pick = list(range(len(every)))  # a seeded shuffle's prefix, so a larger limit only adds items
        random.Random(f"babi-pick:{seed}:{task}").shuffle(pick)
        pick = pick[:n + 1]
        for cond in conditions:
            hist = [every[j].messages if cond == "in_window" else _filler(every[j], filler_tokens, seed * 7919 + j,
                                                                          count) for j in pick]
            for i, j in enumerate(pick[:-1]):
                ep = every[j]
                items.append(Item(
                    task=name, item_id=f"qa{task}/{cond}/{j}", messages=hist[i], question=ep.question, gold=ep.answer,
                    aliases=ep.aliases, evidence=tuple(ep.meta["supporting_messages"]),
                    budget=full_budget if cond == "in_window" else None, max_new_tokens=MAX_NEW_TOKENS,
                    donor=hist[i + 1], donor_id=f"qa{task}/{pick[i + 1]}",
                    fields={"babi_task": task, "condition": cond, "subtask": f"babi-qa{task}",
                            "story_index": ep.meta["story_index"], "filler_tokens": 0 if cond == "in_window"
                            else filler_tokens}))
    return items


def instruction_items(n: int, seed: int, full_budget: int) -> list[Item]:
    chats = []
    for i in range(min(n, len(INSTRUCTIONS)) + 1):
        r = random.Random(f"capability:{seed}:{i}")
        msgs: list[dict] = []
        Ctx(r, faker_for(r.getrandbits(32)), []).chat(msgs, 2)
        chats.append(tuple(msgs))
    items = []
    for i, (q, answers) in enumerate(INSTRUCTIONS[:len(chats) - 1]):
        items.append(Item(task="capability", item_id=f"instruction/{i}", messages=chats[i], question=q,
                          gold=answer_text(answers[0]), aliases=answers, budget=full_budget,
                          max_new_tokens=MAX_NEW_TOKENS, donor=chats[i + 1], donor_id=f"instruction/{i + 1}",
                          fields={"subtask": "instruction", "condition": "in_window"}))
    return items


def capability_items(n: int, seed: int, count: Callable[[str], int], full_budget: int, data_dir=None) -> list[Item]:
    babi = babi_items(n, seed, count, full_budget, data_dir, tasks=CAPABILITY_TASKS, conditions=("in_window",),
                      name="capability")
    return babi + instruction_items(n, seed, full_budget)
