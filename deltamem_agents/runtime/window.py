"""The visible-window policy shared by the session runtime and the trainer (docs/design.md, section 3).

The prompt shows the system prompt plus the most recent messages that fit `budget` tokens, keeping `reserve`
tokens free for the reply. When a new turn would overflow, the oldest messages are evicted *in a chunk*
(down to `low_water` × budget) so the window's KV cache is rebuilt rarely. Evicted messages live on only in
the δ-state. `plan_epochs` replays the policy over a whole conversation, which is how the trainer builds
episodes that match what the runtime would have shown and written, turn by turn.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowPolicy:
    budget: int = 2048  # max prompt tokens: system + window + new messages + reserve
    reserve: int = 128  # tokens kept free for the reply
    low_water: float = 0.5  # after an eviction the prompt uses at most this fraction of the budget

    def __post_init__(self) -> None:
        if self.budget < 64 or not 0 <= self.reserve < self.budget or not 0.0 < self.low_water <= 1.0:
            raise ValueError(f"invalid WindowPolicy {self}")

    def evict(self, system: int, window: list[int], incoming: int) -> int:
        """How many of the oldest window messages to drop before adding `incoming` tokens (0 = keep all)."""
        total = system + sum(window) + incoming + self.reserve
        if total <= self.budget:
            return 0
        target = self.low_water * self.budget
        drop = 0
        while drop < len(window) and total > target:
            total -= window[drop]
            drop += 1
        return drop


@dataclass(frozen=True)
class Epoch:
    """One stretch between KV rebuilds: messages [start, first_new) are re-read (not written), [first_new, end) are new."""

    start: int
    first_new: int
    end: int


def plan_epochs(counts: list[int], arrivals: dict[int, int], system: int, policy: WindowPolicy) -> list[Epoch]:
    """Replay the policy over message token counts. `arrivals` maps a message index to the number of
    messages that arrive together there from outside (a user message, or a batch of tool results); the
    policy is applied at each arrival exactly as the runtime does when those messages come in. Messages
    that are not arrivals (the assistant's replies) simply join the window."""
    epochs: list[Epoch] = []
    start = first_new = 0
    for i in sorted(arrivals):
        drop = policy.evict(system, counts[start:i], sum(counts[i:i + arrivals[i]]))
        if drop:
            epochs.append(Epoch(start, first_new, i))
            start, first_new = start + drop, i
    epochs.append(Epoch(start, first_new, len(counts)))
    return epochs
