"""One conversation on a loaded model: message log, δ-state, visible window and its KV cache (docs/design.md, section 3).

Invariants:
- every token of every non-system message (user, assistant, tool calls, tool results) is written into the
  δ-state exactly once, in order, with its message index as message id;
- the prompt is the system prompt plus the newest messages that fit the `WindowPolicy`; when a turn would
  overflow, the oldest messages are evicted in a chunk and the window's KV cache is rebuilt once by
  re-reading the remaining window without writing (message id -1), from position 0;
- otherwise the KV cache is reused across turns, so a turn costs only its new tokens;
- messages that do not fit the window even alone (a long paste, a big tool result) are accepted: they are
  written into the δ-state in full, in one pass over the system prompt plus those messages on a temporary
  KV cache (exactly what a window big enough for them would have written), and the log keeps them whole;
  the window then starts at them and shows only their newest tokens (see `visible_ids`).
The trainer replays the same policy and the same passes (runtime/replay.py), so the adapter is trained on
exactly what it sees here. After a process restart the KV cache is rebuilt the same way as after an
eviction (the δ-state itself is restored bit for bit from the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ..core.state import DeltaState
from ..errors import InvalidMessageError
from .decode import Cursor, Engine, Generation, GenerationConfig, LogitsConstraint
from .memtrim import release_free_memory
from .messages import validate_message
from .render import ChatRenderer
from .window import WindowPolicy


@dataclass
class PreparedTurn:
    """A turn whose messages are logged and whose window is ready: the prompt suffix still to feed."""

    renderer: ChatRenderer
    ids: list[int]
    mids: list[int]  # message id per token (the reply's id on the generation prompt)
    reply_id: int


@dataclass
class Conversation:
    """Durable part of a session (what the store persists) plus a disposable KV cursor."""

    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    state: DeltaState | None = None  # None when the model runs without δ-mem (baselines)
    window_start: int = 0
    system_prompt: str = ""
    version: int = 0
    cursor: Cursor | None = None  # KV cache of [system + messages[window_start:]] (+ what was fed)
    cursor_system: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {"window_start": self.window_start, "system_prompt": self.system_prompt,
                "num_messages": len(self.messages)}


class SessionRunner:
    """Turn logic for conversations on one model; stateless itself (all per-conversation data is passed in)."""

    def __init__(self, engine: Engine, policy: WindowPolicy) -> None:
        self.engine, self.policy = engine, policy
        self._renderers: dict[str, ChatRenderer] = {}

    def renderer(self, system_prompt: str) -> ChatRenderer:
        r = self._renderers.get(system_prompt)
        if r is None:
            if len(self._renderers) > 32:
                self._renderers.clear()
            r = self._renderers[system_prompt] = ChatRenderer(self.engine.tok, system_prompt)
        return r

    # --- window -------------------------------------------------------------------------------------
    def _counts(self, conv: Conversation, r: ChatRenderer, msgs: list[dict[str, Any]]) -> list[int]:
        return [len(r.message_ids(m)) for m in msgs]

    def _ensure_window(self, conv: Conversation, r: ChatRenderer, incoming: int, evict: bool = True) -> None:
        """Evict in a chunk if the incoming tokens would overflow; (re)build the KV cursor if needed."""
        drop = 0
        if evict:
            window = self._counts(conv, r, conv.messages[conv.window_start:])
            drop = self.policy.evict(len(r.system_ids), window, incoming)
        if drop or conv.cursor is None or conv.cursor_system != conv.system_prompt:
            conv.window_start += drop
            cur = self.engine.new_cursor(conv.state)
            ids = list(r.system_ids) + self.visible_ids(conv, r)
            self.engine.forward(cur, ids, [-1] * len(ids))  # re-read only: nothing is written twice
            conv.state = cur.state
            conv.cursor, conv.cursor_system = cur, conv.system_prompt  # the old KV cache is freed here
            if drop:
                release_free_memory()  # give the freed KV buffers back to the OS (runtime/memtrim.py)

    def room(self, r: ChatRenderer) -> int:
        """Tokens the window's messages may take when it is rebuilt: the budget minus system prompt and reserve."""
        return max(self.policy.budget - self.policy.reserve - len(r.system_ids), 1)

    def visible_ids(self, conv: Conversation, r: ChatRenderer) -> list[int]:
        """The window's tokens as shown when its KV cache is rebuilt (re-read, never written).

        A window that holds more than `room` tokens -- only after messages too long for the window were
        written -- is cut in front: it shows the header of its first message's block (role tokens) followed
        by the newest tokens, `room` in all. The log and the δ-state keep every token."""
        msgs = conv.messages[conv.window_start:]
        ids, _ = r.render(msgs, written=False)
        room = self.room(r)
        if len(ids) <= room:
            return ids
        head = min(r.content_prefix_len(msgs[0]["role"]), room // 2)
        return ids[:head] + ids[len(ids) - (room - head):]

    def _fits(self, r: ChatRenderer, incoming: int, reply_room: int) -> bool:
        return len(r.system_ids) + incoming + reply_room <= self.policy.budget

    def _write_long(self, conv: Conversation, r: ChatRenderer, msgs: list[dict[str, Any]],
                    blocks: list[list[int]]) -> None:
        """Write messages that do not fit the window: the system prompt (re-read) and their blocks (written)
        in one pass on a temporary KV cache, fed in window-sized slices; then the window restarts at them
        and its cache is rebuilt from what `visible_ids` shows."""
        first = len(conv.messages)
        conv.cursor = None  # free the old window's KV cache before the long pass
        cur = self.engine.new_cursor(conv.state)
        self.engine.forward(cur, list(r.system_ids), [-1] * len(r.system_ids))
        ids = [t for b in blocks for t in b]
        mids = [first + k for k, b in enumerate(blocks) for _ in b]
        step = self.policy.budget
        for a in range(0, len(ids), step):
            self.engine.forward(cur, ids[a:a + step], mids[a:a + step])
        conv.state = cur.state
        conv.messages.extend(msgs)
        conv.window_start = first
        del cur
        release_free_memory()
        self._ensure_window(conv, r, 0, evict=False)

    # --- turns --------------------------------------------------------------------------------------
    def add(self, conv: Conversation, new: list[dict[str, Any]]) -> None:
        """Write messages into the conversation without generating (teacher-forced history, tool results).

        Runs of user/tool messages arrive together (the window policy is applied once per run, as when
        they come in live); assistant messages join the window like generated replies do."""
        msgs = [validate_message(m) for m in new]
        if any(m["role"] == "system" for m in msgs):
            raise InvalidMessageError("system messages set the session's system prompt; they are not logged")
        r = self.renderer(conv.system_prompt)
        i = 0
        while i < len(msgs):
            j = i + 1
            assistant = msgs[i]["role"] == "assistant"
            while j < len(msgs) and (msgs[j]["role"] == "assistant") == assistant:
                j += 1
            blocks = [r.message_ids(m) for m in msgs[i:j]]
            if assistant:
                self._ensure_window(conv, r, 0, evict=False)
            elif not self._fits(r, sum(map(len, blocks)), self.policy.reserve):
                self._write_long(conv, r, msgs[i:j], blocks)
                i = j
                continue
            else:
                self._ensure_window(conv, r, sum(map(len, blocks)))
            assert conv.cursor is not None
            first = len(conv.messages)
            ids = [t for b in blocks for t in b]
            mids = [first + k for k, b in enumerate(blocks) for _ in b]
            self.engine.forward(conv.cursor, ids, mids)
            conv.state = conv.cursor.state
            conv.messages.extend(msgs[i:j])
            i = j

    def prepare(self, conv: Conversation, new: list[dict[str, Any]], cfg: GenerationConfig) -> PreparedTurn:
        """A turn up to its prompt forward: validate `new`, make room in the window (messages too long for it are
        written into the δ-state in full), log the messages, and return the prompt suffix to feed."""
        msgs = [validate_message(m) for m in new]
        if any(m["role"] == "system" for m in msgs):
            raise InvalidMessageError("system messages set the session's system prompt; they are not logged")
        r = self.renderer(conv.system_prompt)
        blocks = [r.message_ids(m) for m in msgs]
        gp = list(r.generation_prompt_ids)
        reserve = min(max(cfg.max_new_tokens, 0), self.policy.reserve)
        first = len(conv.messages)
        reply_id = first + len(msgs)
        if self._fits(r, sum(map(len, blocks)) + len(gp), reserve):
            self._ensure_window(conv, r, sum(map(len, blocks)))  # the generation prompt is inside the reserve
            ids = [t for b in blocks for t in b] + gp
            mids = [first + i for i, b in enumerate(blocks) for _ in b] + [reply_id] * len(gp)
            conv.messages.extend(msgs)
        else:  # too long for the window: written in full, the window shows their newest part
            self._write_long(conv, r, msgs, blocks)
            ids, mids = gp, [reply_id] * len(gp)
        assert conv.cursor is not None
        return PreparedTurn(r, ids, mids, reply_id)

    def finish(self, conv: Conversation, turn: PreparedTurn, res: Generation, before: DeltaState | None) -> None:
        """Commit a decoded reply: the cache and the state hold its rendered block, the log holds the message."""
        cur = conv.cursor
        assert cur is not None
        reply = self._reply_message(res)
        self._commit_reply(cur, turn.renderer, reply, res, before, turn.reply_id)
        conv.messages.append(reply)
        conv.state = cur.state

    def respond(self, conv: Conversation, new: list[dict[str, Any]], cfg: GenerationConfig,
                constraint: LogitsConstraint | None = None, result: Generation | None = None) -> Iterator[str]:
        """Append `new` messages, generate the assistant reply (yielding text deltas) and commit it."""
        turn = self.prepare(conv, new, cfg)
        cur = conv.cursor
        assert cur is not None
        res = result if result is not None else Generation()
        logits = self.engine.forward(cur, turn.ids, turn.mids)
        res.prompt_tokens = len(cur.tokens)  # the whole visible prompt (system + window + new messages)
        before = cur.state.clone() if cur.state is not None else None  # state before any generated token
        yield from self.engine.decode(cur, logits, turn.reply_id, cfg, constraint, res)
        self.finish(conv, turn, res, before)

    def _reply_message(self, res: Generation) -> dict[str, Any]:
        from .tools import parse_tool_calls

        content, calls, _invalid = parse_tool_calls(res.text)
        msg: dict[str, Any] = {"role": "assistant", "content": content if calls else res.text}
        if calls:
            msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
            res.finish_reason = "tool_calls"
        return validate_message(msg)

    def _commit_reply(self, cur: Cursor, r: ChatRenderer, reply: dict[str, Any], res: Generation,
                      before: DeltaState | None, reply_id: int) -> None:
        """Make the cache and the state hold exactly the reply's rendered block, each token written once.

        Usually the generated tokens are the block's content tokens and only the closing tokens are fed.
        If re-tokenising the text gives other tokens (or a stop sequence cut it), the generated tokens are
        rolled back (KV crop + the state from before the first generated token) and the block is fed."""
        block = r.message_ids(reply)
        head = len(r.generation_prompt_ids)
        n = res.n_fed
        if block[head:head + n] == res.token_ids[:n]:
            tail = block[head + n:]
        else:
            if n:
                cur.cache.crop(-n)
                del cur.tokens[-n:]
            cur.state = before
            tail = block[head:]
        # the reply's content tokens count as generated (a copy channel does not write them), its closing tokens not
        close = len(r.message_ids({"role": "assistant", "content": ""})) - head
        split = max(0, len(block) - close - (len(block) - len(tail)))
        if split:
            self.engine.forward(cur, tail[:split], [reply_id] * split, generated=True)
        if tail[split:]:
            self.engine.forward(cur, tail[split:], [reply_id] * (len(tail) - split))
