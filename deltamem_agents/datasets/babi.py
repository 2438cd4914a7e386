"""Reader for bAbI v1.2 QA files and conversion into chat ``Episode``s.

Files are read in place from a directory (argument or ``$DELTAMEM_BABI_DIR``); nothing is
downloaded or copied. Format: ``"<id> <sentence>"`` lines, question lines
``"<id> <question>\\t<answer>\\t<supporting ids>"``, and a story restarts when the id returns to 1.
Each question yields one :class:`BabiStory` holding the story sentences up to that question
(earlier questions are dropped; supporting ids are mapped to sentence positions).

In an episode the sentences become user messages (``sentences_per_message`` per message, prefixed
``"Story update: "``), each followed by a short assistant acknowledgement. Only ``split="train"``
files should be used for training.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .episode import Episode, answer_text

__all__ = ["BabiStory", "read_babi", "babi_episodes", "story_to_episode", "babi_file", "resolve_babi_dir",
           "ENV_VAR", "DEFAULT_TASKS", "parse_tasks"]

ENV_VAR = "DELTAMEM_BABI_DIR"
DEFAULT_TASKS = (1, 2, 3, 5, 6, 7)
ALL_TASKS = tuple(range(1, 21))
_ACKS = ("Okay.", "Got it.", "Noted.", "Understood.", "Okay, noted.", "Thanks, got it.", "Alright.")


@dataclass(frozen=True)
class BabiStory:
    """One bAbI question with the story sentences that precede it."""

    sentences: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]  # positions in ``sentences`` (0-based), in the file's order
    supporting_ids: tuple[int, ...]  # original line ids from the file
    story_index: int  # which story (0-based) of the file
    task: int  # bAbI task id parsed from the file name (0 when unknown)


def _task_of(path: Path) -> int:
    m = re.match(r"qa(\d+)_", path.name)
    return int(m.group(1)) if m else 0


def read_babi(path) -> list[BabiStory]:
    """Parse one bAbI file; one item per question line."""
    path = Path(path)
    task = _task_of(path)
    items: list[BabiStory] = []
    sentences: list[str] = []
    pos_of_id: dict[int, int] = {}
    story_index = -1
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            head, _, rest = line.partition(" ")
            if not head.isdigit():
                raise ValueError(f"{path}:{lineno}: expected '<id> <text>', got {line!r}")
            line_id = int(head)
            if line_id == 1:
                sentences, pos_of_id = [], {}
                story_index += 1
            if "\t" in rest:
                fields = rest.split("\t")
                if len(fields) < 3:
                    raise ValueError(f"{path}:{lineno}: question line needs question, answer and supporting ids")
                sup_ids = tuple(int(x) for x in fields[2].split())
                items.append(BabiStory(tuple(sentences), fields[0].strip(), fields[1].strip(),
                                       tuple(pos_of_id[i] for i in sup_ids), sup_ids, story_index, task))
            else:
                pos_of_id[line_id] = len(sentences)
                sentences.append(rest.strip())
    return items


def resolve_babi_dir(data_dir=None) -> Path:
    """``data_dir`` or ``$DELTAMEM_BABI_DIR``; raises ``FileNotFoundError`` when neither is usable."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR)
        if not data_dir:
            raise FileNotFoundError(
                f"No bAbI directory given: pass data_dir or set the {ENV_VAR} environment variable "
                "to the folder holding the bAbI v1.2 'en' files (e.g. qa1_single-supporting-fact_train.txt)."
            )
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"bAbI directory {str(path)!r} does not exist (set {ENV_VAR} or pass data_dir).")
    return path


def babi_file(data_dir, task: int, split: str) -> Path:
    """Path of ``qa<task>_*_<split>.txt`` inside ``data_dir``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    matches = sorted(Path(data_dir).glob(f"qa{int(task)}_*_{split}.txt"))
    if not matches:
        raise FileNotFoundError(f"no bAbI file for task {task} ({split}) in {str(data_dir)!r}")
    return matches[0]


def story_to_episode(item: BabiStory, *, split: str, sentences_per_message: int = 3,
                     rng: random.Random | None = None) -> Episode:
    """Turn one :class:`BabiStory` into a chat episode (see module docstring)."""
    if sentences_per_message < 1:
        raise ValueError("sentences_per_message must be >= 1")
    rng = rng or random.Random(0)
    messages: list[dict] = []
    msg_of_sentence: list[int] = []
    for start in range(0, len(item.sentences), sentences_per_message):
        chunk = item.sentences[start : start + sentences_per_message]
        msg_of_sentence += [len(messages)] * len(chunk)
        messages += [{"role": "user", "content": "Story update: " + " ".join(chunk)},
                     {"role": "assistant", "content": rng.choice(_ACKS)}]
    support_msgs = sorted({msg_of_sentence[p] for p in item.supporting})
    fact_index = max(msg_of_sentence[p] for p in item.supporting) if item.supporting else -1
    meta = {"task": item.task, "split": split, "story_index": item.story_index,
            "supporting_messages": support_msgs, "supporting_sentences": list(item.supporting),
            "supporting_ids": list(item.supporting_ids), "n_sentences": len(item.sentences),
            "sentences_per_message": sentences_per_message, "value": item.answer}
    return Episode(tuple(messages), item.question, answer_text(item.answer), (item.answer,), fact_index, "babi", meta)


def parse_tasks(text: str) -> tuple[int, ...]:
    """bAbI task numbers from a comma list ("4,11") or "all"; a ValueError names anything outside 1..20."""
    try:
        tasks = ALL_TASKS if text.strip() == "all" else tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"bAbI tasks are a comma list of 1..20 or 'all', not {text!r}") from None
    if not tasks or any(not 1 <= t <= 20 for t in tasks):
        raise ValueError(f"bAbI tasks are 1..20, not {text!r}")
    return tasks


def babi_episodes(data_dir=None, tasks=DEFAULT_TASKS, split: str = "train", max_items: int | None = None,
                  sentences_per_message: int = 3, seed: int = 0) -> list[Episode]:
    """Episodes for ``tasks`` from the ``split`` files ("train" or "test").

    ``max_items`` caps the items *per task*; when set, a seeded random subset is taken (in file
    order). ``seed`` also drives the acknowledgement wording; ``meta["seed"]`` records it.
    """
    root = resolve_babi_dir(data_dir)
    rng = random.Random(f"babi:{split}:{seed}")
    out: list[Episode] = []
    for task in tasks:
        items = read_babi(babi_file(root, task, split))
        if max_items is not None and max_items < len(items):
            keep = sorted(rng.sample(range(len(items)), max_items))
            items = [items[i] for i in keep]
        for item in items:
            ep = story_to_episode(item, split=split, sentences_per_message=sentences_per_message, rng=rng)
            ep.meta["seed"] = seed
            out.append(ep)
    return out
