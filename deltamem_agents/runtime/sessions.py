"""The sessions one loaded model is serving: live `Conversation`s in an LRU in front of a `SessionStore`.

A live conversation holds what a turn needs at hand (message log, δ-state, window start, KV cursor); the
store holds what survives a restart (the same, without the KV cache, as a versioned record). This module
converts between the two and keeps the most recently used conversations live, so a turn on a live session
reuses its KV cache instead of rebuilding it::

    live = LiveSessions(store, adapter=model.deltamem, capacity=8)
    conv = live.get("alice", system_prompt)        # live, or loaded (created empty) from the store
    ...                                             # a turn changes conv.messages / conv.state / ...
    live.commit(conv)                               # one transaction: state + log + metadata
    live.forget("alice")                            # after a failed turn, a delete or an import

Callers serialise turns on one session with ``store.lock(session_id)``; this class only guards its LRU.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..core.state import DeltaState
from .session import Conversation
from .store import LRUCache, SessionRecord, SessionStore

__all__ = ["LiveSessions"]


class LiveSessions:
    """An LRU of live conversations (``capacity`` of them) over a session store, for one model.

    ``adapter`` is the model's attached δ-mem (None: sessions carry no state, the baseline). Stored states
    are checked against its fingerprint and shapes when a session is loaded."""

    def __init__(self, store: SessionStore, adapter: Any = None, *, capacity: int = 8) -> None:
        self.store = store
        self.adapter = adapter
        self.conversations: LRUCache[str, Conversation] = LRUCache(capacity)

    # --- δ-state <-> record bytes ---------------------------------------------------------------------
    def _state_expect(self) -> dict[str, Any]:
        return {"fingerprint": self.adapter.fingerprint if self.adapter is not None else None}

    def fresh_state(self) -> DeltaState | None:
        """An empty δ-state for one session (None without δ-mem)."""
        return self.adapter.zero_state(1) if self.adapter is not None else None

    def decode_state(self, data: bytes | None) -> DeltaState | None:
        """A stored state as a `DeltaState` checked against the adapter (a fresh one for None)."""
        if data is None or self.adapter is None:
            return self.fresh_state()
        state, _ = DeltaState.from_bytes(data, expect=self._state_expect())
        self.adapter.check_state(state)
        return state

    def encode_state(self, state: DeltaState | None) -> bytes | None:
        return state.to_bytes(self._state_expect()) if state is not None else None

    # --- conversations --------------------------------------------------------------------------------
    def from_record(self, rec: SessionRecord, system_prompt: str) -> Conversation:
        """A conversation from a stored record (``system_prompt`` if the record names none)."""
        meta = rec.metadata or {}
        return Conversation(rec.session_id, [dict(m) for m in rec.messages], self.decode_state(rec.state),
                            int(meta.get("window_start", 0)), meta.get("system_prompt", system_prompt),
                            rec.version)

    def get(self, session_id: str, system_prompt: str) -> Conversation:
        """The live conversation, else the stored session loaded (and created empty if it does not exist).

        On a store shared with other processes a live copy is used only if it is still the stored version."""
        conv = self.conversations.get(session_id)
        if conv is not None:
            if self.store.is_current(session_id, conv.version):
                return conv
            self.conversations.pop(session_id)  # another process committed a turn (or deleted the session)
            self.store.invalidate(session_id)
        rec = self.store.get_or_create(session_id, {"system_prompt": system_prompt})
        conv = self.from_record(rec, system_prompt)
        self.conversations.put(session_id, conv)
        return conv

    def detached(self, rec: SessionRecord | None, system_prompt: str) -> Conversation:
        """A throw-away conversation, in neither the LRU nor the store: the session's committed state and log
        (an empty one for None) with an empty visible window, so a turn on it shows only its own messages,
        reads the session's memory and continues its message numbering. What a side call runs on."""
        messages = list(rec.messages) if rec is not None else []
        return Conversation(f"side-{uuid.uuid4().hex}", messages,
                            self.decode_state(rec.state if rec is not None else None), len(messages), system_prompt)

    def commit(self, conv: Conversation) -> None:
        """Write the conversation's state, log and metadata to the store (optimistic on its version)."""
        rec = self.store.commit(conv.session_id, state=self.encode_state(conv.state), messages=conv.messages,
                                metadata=conv.metadata(), expected_version=conv.version)
        conv.version = rec.version

    def is_live(self, session_id: str) -> bool:
        return session_id in self.conversations

    def forget(self, session_id: str) -> None:
        """Drop the live copy; the next use reloads the session from the store."""
        self.conversations.pop(session_id)
