"""LoCoMo (Maharana et al., 2024) as benchmark items, following the official protocol (../shared/data/README.md).

Each conversation's sessions, in session order, become the chat history: speaker_a's turns are user
messages, speaker_b's assistant messages, each written as the official prompt writes a turn
(`Name said, "text"` plus ` and shared <caption>.` for shared images), and the first turn of a session
starts with `DATE: <session date>`. The question is asked at the end as the official QA prompt; category 2
gets the official "Use DATE of CONVERSATION ..." suffix and category 5 the official two-option form
("(a) No information available (b) <adversarial answer>", order drawn from a seeded RNG per question).
Works unchanged on any file with the released layout (the 5-conversation dev split or all 10).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from ..items import Item
from .paths import data_root

QA_PROMPT = ("Based on the above conversations, write a short answer for the following question in a few words. "
             "Do not write complete and lengthy sentences. Answer with exact words from the conversations whenever "
             "possible.\n\nQuestion: {}")
TEMPORAL_SUFFIX = " Use DATE of CONVERSATION to answer with an approximate date."
ADVERSARIAL = " (a) {} (b) {}. Select the correct answer by writing (a) or (b)."
NO_INFO = "No information available"
SYSTEM = ("You are a helpful assistant. Below is a conversation between two people: {} and {}. The conversation "
          "takes place over multiple days and the date of each conversation is written at the beginning of it.")
MAX_NEW_TOKENS = 32  # the official scorer allows 50 per question; answers are cut at their first line anyway


def default_path() -> Path:
    """$DELTAMEM_DATA/locomo/locomo_dev.json (default data root: ../shared/data)."""
    return data_root() / "locomo" / "locomo_dev.json"


def load_locomo(path: str | Path | None = None) -> list[dict[str, Any]]:
    p = Path(path) if path else default_path()
    if not p.is_file():
        raise FileNotFoundError(f"LoCoMo file {str(p)!r} not found (pass --locomo PATH or set DELTAMEM_DATA)")
    data = json.loads(p.read_text())
    if not isinstance(data, list) or not all("conversation" in c and "qa" in c for c in data):
        raise ValueError(f"{p} does not look like LoCoMo (a list of {{'conversation', 'qa', ...}})")
    return data


def sessions(conv: dict[str, Any]) -> list[int]:
    """Session numbers that hold turns, in numeric order (session_10 after session_9)."""
    nums = [int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)) and conv[k]]
    return sorted(nums)


def conversation_messages(conv: dict[str, Any]) -> tuple[list[dict], dict[str, int]]:
    """(chat messages, dia_id -> message index)."""
    a = conv["speaker_a"]
    msgs: list[dict] = []
    index: dict[str, int] = {}
    for s in sessions(conv):
        for j, turn in enumerate(conv[f"session_{s}"]):
            text = f'{turn["speaker"]} said, "{turn["text"]}"'
            if turn.get("blip_caption"):
                text += f' and shared {turn["blip_caption"]}.'
            if j == 0:
                text = f"DATE: {conv.get(f'session_{s}_date_time', '')}\n{text}"
            index[turn.get("dia_id", f"S{s}:{j}")] = len(msgs)
            msgs.append({"role": "user" if turn["speaker"] == a else "assistant", "content": text})
    return msgs, index


def question_of(qa: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, str] | None]:
    """The question text as the official runner asks it, and the options for category 5."""
    cat = int(qa["category"])
    if cat == 2:
        return QA_PROMPT.format(qa["question"] + TEMPORAL_SUFFIX), None
    if cat == 5:
        adv = str(qa.get("answer", qa.get("adversarial_answer", "")))
        opts = {"a": NO_INFO, "b": adv} if rng.random() < 0.5 else {"a": adv, "b": NO_INFO}
        return QA_PROMPT.format(qa["question"] + ADVERSARIAL.format(opts["a"], opts["b"])), opts
    return QA_PROMPT.format(qa["question"]), None


def locomo_items(path: str | Path | None = None, *, limit: int | None = None, seed: int = 0,
                 categories: tuple[int, ...] = (1, 2, 3, 4, 5)) -> list[Item]:
    """One item per question; `limit` caps the questions per (conversation, category) (a seeded sample)."""
    data = load_locomo(path)
    convs = [conversation_messages(c["conversation"]) for c in data]
    hists = [tuple(m) for m, _ in convs]
    items = []
    for ci, sample in enumerate(data):
        conv, index = sample["conversation"], convs[ci][1]
        sid = sample.get("sample_id", f"conv-{ci}")
        nxt = (ci + 1) % len(data)  # the shuffled control reads the next conversation's memory
        donor, donor_id = (hists[nxt], data[nxt].get("sample_id", f"conv-{nxt}")) if len(data) > 1 else (None, None)
        system = SYSTEM.format(conv["speaker_a"], conv["speaker_b"])
        by_cat: dict[int, list[int]] = {}
        for qi, qa in enumerate(sample["qa"]):
            by_cat.setdefault(int(qa["category"]), []).append(qi)
        for cat in categories:
            qis = by_cat.get(cat, [])
            if limit is not None and len(qis) > limit:  # a seeded shuffle's prefix: a larger limit adds items
                random.Random(f"locomo:{seed}:{sid}:{cat}").shuffle(qis)
                qis = sorted(qis[:limit])
            for qi in qis:
                qa = sample["qa"][qi]
                question, opts = question_of(qa, random.Random(f"locomo-adv:{seed}:{sid}:{qi}"))
                gold = NO_INFO if cat == 5 else str(qa["answer"])  # category 5: abstaining is right
                ev = tuple(sorted(index[e] for e in qa.get("evidence", []) if e in index))
                items.append(Item(
                    task="locomo", item_id=f"{sid}/q{qi}", messages=hists[ci], question=question, gold=gold,
                    scoring="locomo", evidence=ev, system_prompt=system, max_new_tokens=MAX_NEW_TOKENS,
                    donor=donor, donor_id=donor_id, query=qa["question"],
                    fields={"category": cat, "conversation": sid, "options": opts,
                            "adversarial_answer": qa.get("adversarial_answer")}))
    return items
