"""One benchmark question: a chat history, the question asked at its end, the gold answer and bookkeeping.

Every task turns its data into `Item`s and every backend answers `Item`s, so the runner never branches on
task or backend. `donor` is the history of a *different* episode of the same task and cell: the shuffled-
memory control writes its δ-state from it. `evidence` lists the message indices that hold the answer (the
fact, the supporting bAbI sentences, the LoCoMo evidence turns) so a row can say whether it was visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..datasets.episode import Episode
from ..runtime.render import DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True)
class Item:
    task: str
    item_id: str  # unique within the task, stable across runs with the same seed (resumability key)
    messages: tuple[dict, ...]  # the chat history before the question
    question: str  # content of the final user message
    gold: str
    aliases: tuple[str, ...] = ()  # accepted answers for "contains" scoring
    scoring: str = "contains"  # "contains" | "locomo"
    fields: dict[str, Any] = field(default_factory=dict)  # task-specific row fields (distance, category, ...)
    evidence: tuple[int, ...] = ()  # message indices holding the answer
    budget: int | None = None  # visible-token budget override (the in-window conditions); None = the run's
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = 16
    donor: tuple[dict, ...] | None = None  # history of another episode of the same task (shuffled control)
    donor_id: str | None = None
    query: str | None = None  # what the RAG backends search with (default: the question)
    fact_turns: tuple[int, ...] = ()  # message indices of the turns stating the facts (the `fact` ceiling's history)

    def episode(self, messages: tuple[dict, ...] | None = None) -> Episode:
        """The item as an `Episode` (what `train.episode.history_passes` replays); `messages` swaps the history."""
        msgs = self.messages if messages is None else messages
        fact = max(self.evidence) if self.evidence and messages is None else -1
        return Episode(msgs, self.question, self.gold, self.aliases or (self.gold,), fact, self.task, {})
