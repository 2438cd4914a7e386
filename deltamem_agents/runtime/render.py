"""Render a conversation into token ids one message at a time, with the message id of every token.

`ChatRenderer` asks the backbone's own chat template for each message's block (role header, content,
end-of-turn tokens) as the difference between rendering [system, msg] and [system] alone. It checks once
that the template is concatenative (blocks rendered separately equal the whole conversation rendered at
once); templates that are not are refused rather than silently mis-labelled. The trainer and the session
runtime both use this class, so a training episode and a live chat produce identical tokens.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .messages import template_text, validate_message

PROBE = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Bye."}]


class ChatRenderer:
    def __init__(self, tokenizer: Any, system_prompt: str) -> None:
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self._sys_text = self._render([])
        self.system_ids = self._encode(self._sys_text)
        self.generation_prompt_ids = self._encode(self._render([], add_generation_prompt=True)[len(self._sys_text):])
        whole = self._encode(self._render(PROBE))
        parts = self.system_ids + [t for m in PROBE for t in self.message_ids(m)]
        if whole != parts:
            raise ValueError("this chat template is not concatenative per message; incremental rendering is "
                             "not supported for it yet")
        self._message_ids_cached = lru_cache(maxsize=4096)(self._message_ids_uncached)

    def _render(self, msgs: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        conv = [{"role": "system", "content": self.system_prompt}] + msgs
        return self.tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _message_ids_uncached(self, role: str, text: str) -> tuple[int, ...]:
        block = self._render([{"role": role, "content": text}])
        assert block.startswith(self._sys_text)
        return tuple(self._encode(block[len(self._sys_text):]))

    def message_block(self, msg: dict[str, Any]) -> tuple[str, list[int], list[tuple[int, int]]]:
        """One message's block as text, its token ids (== `message_ids`) and each token's character span."""
        m = validate_message(msg)
        text = self._render([{"role": m["role"], "content": template_text(m)}])[len(self._sys_text):]
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if ids != self.message_ids(msg):
            raise ValueError("tokenising a message block with offsets gave other ids than message_ids")
        return text, ids, spans

    def message_ids(self, msg: dict[str, Any]) -> list[int]:
        """Token ids of one message's block (validated first)."""
        m = validate_message(msg)
        fn = getattr(self, "_message_ids_cached", self._message_ids_uncached)
        return list(fn(m["role"], template_text(m)))

    def content_prefix_len(self, role: str) -> int:
        """Number of header tokens before the content of a `role` block (e.g. '<|im_start|>assistant\\n')."""
        return len(self._encode(self._render([{"role": role, "content": ""}])[len(self._sys_text):].split("\n")[0]
                                + "\n"))

    def render(self, messages: list[dict[str, Any]], first_id: int = 0, written: bool = True
               ) -> tuple[list[int], list[int]]:
        """Token ids and per-token message ids (first_id, first_id+1, ...; -1 for all if not written)."""
        ids: list[int] = []
        mids: list[int] = []
        for i, m in enumerate(messages):
            t = self.message_ids(m)
            ids += t
            mids += [first_id + i if written else -1] * len(t)
        return ids, mids

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."
