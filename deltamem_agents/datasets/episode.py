"""The ``Episode`` record shared by every conversation generator.

An episode is a chat history (chronological list of OpenAI-style message dicts) followed by a
final user ``question`` whose short gold ``answer`` is a fact stated earlier in the history.
``fact_index`` points at the message that states the (latest) asked fact, so callers can tell
whether that message is still inside the runtime's recent window or only in the memory state.

Episodes are JSON-safe: ``Episode.from_dict(json.loads(json.dumps(ep.to_dict()))) == ep``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Episode", "approx_tokens", "tokens_after", "answer_text"]


def approx_tokens(text: str) -> int:
    """Cheap token estimate: about 1.3 tokens per whitespace-separated word."""
    words = len(text.split())
    return int(math.ceil(1.3 * words)) if words else 0


def message_text(message: dict) -> str:
    """The text a message contributes to the prompt (content plus any tool-call arguments)."""
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        parts.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    return " ".join(p for p in parts if p)


def tokens_after(messages, index: int, count_tokens: Callable[[str], int] | None = None) -> int:
    """Sum of ``count_tokens`` over the messages strictly after ``messages[index]``."""
    count = count_tokens or approx_tokens
    return sum(count(message_text(m)) for m in list(messages)[index + 1 :])


def answer_text(value: str) -> str:
    """Gold reply for a value: first letter capitalised, ending in a period ("bathroom" -> "Bathroom.")."""
    value = value.strip()
    if not value:
        return ""
    text = value[0].upper() + value[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True)
class Episode:
    """One training/eval conversation: history, question, gold answer and bookkeeping."""

    messages: tuple[dict, ...]
    question: str
    answer: str
    aliases: tuple[str, ...]
    fact_index: int
    kind: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise list inputs so equality after a JSON round trip holds.
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if not -1 <= self.fact_index < max(len(self.messages), 1):
            raise ValueError(f"fact_index {self.fact_index} out of range for {len(self.messages)} messages")

    @property
    def chat(self) -> list[dict]:
        """History plus the final user question, ready for a chat template."""
        return [copy.deepcopy(m) for m in self.messages] + [{"role": "user", "content": self.question}]

    def tokens_after_fact(self, count_tokens: Callable[[str], int] | None = None) -> int:
        """Tokens of history after the fact message (0 when there is no fact message)."""
        if self.fact_index < 0:
            return 0
        return tokens_after(self.messages, self.fact_index, count_tokens)

    def to_dict(self) -> dict:
        """JSON-safe plain dict (lists instead of tuples, deep copies)."""
        return {
            "messages": [copy.deepcopy(m) for m in self.messages],
            "question": self.question,
            "answer": self.answer,
            "aliases": list(self.aliases),
            "fact_index": self.fact_index,
            "kind": self.kind,
            "meta": copy.deepcopy(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Episode":
        """Inverse of :meth:`to_dict`."""
        return cls(
            messages=tuple(copy.deepcopy(m) for m in d["messages"]),
            question=d["question"],
            answer=d["answer"],
            aliases=tuple(d.get("aliases") or ()),
            fact_index=int(d.get("fact_index", -1)),
            kind=d.get("kind", "fact"),
            meta=copy.deepcopy(d.get("meta") or {}),
        )


def fact_values(ep: Episode) -> set[str]:
    """Lower-cased fact values of the episode a question can ask about (asked, other or older)."""
    values = {str(ep.meta.get("value", ""))} | {str(v) for v in ep.meta.get("values") or []}
    if ep.meta.get("old_value"):
        values.add(str(ep.meta["old_value"]))
    return {v.lower() for v in values if v}
