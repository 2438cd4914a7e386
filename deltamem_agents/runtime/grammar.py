"""Grammar-constrained decoding of Hermes-style tool calls with xgrammar.

:class:`ToolCallConstraint` implements the decode loop's ``LogitsConstraint`` protocol
(``mask_logits`` / ``accept`` / ``is_finished``, see :mod:`deltamem_agents.runtime.decode`). Every tool
becomes one xgrammar structural-tag ``TagFormat`` whose begin string fixes the tool name
(``<tool_call>\\n{"name": "<fn>", "arguments": ``), whose content is the tool's parameter JSON schema and
whose end is ``}\\n</tool_call>`` -- byte-for-byte what ``runtime.messages.template_text`` renders. The
tool choice picks how the tags are combined:

* ``"auto"``: ``TriggeredTagsFormat(triggers=["<tool_call>"])`` -- free text is unconstrained until the
  model writes ``<tool_call>``; from there the block must be a valid call of one tool, then free text
  resumes (more calls may follow). End-of-turn is allowed whenever no block is open.
* ``"required"``: ``TagsWithSeparatorFormat(separator="\\n", at_least_one=True)`` -- one or more blocks,
  nothing else, then end-of-turn.
* a forced tool: the single ``TagFormat`` of that tool, then end-of-turn.
* ``"none"``: no grammar at all.

Compiled grammars are cached in a small LRU keyed by (tokenizer, vocab size, stop tokens, tools, choice);
``TokenizerInfo``/``GrammarCompiler`` pairs are cached per tokenizer.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Hashable, Iterable

import torch
import xgrammar as xgr
from xgrammar.structural_tag import (
    JSONSchemaFormat,
    StructuralTag,
    TagFormat,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from ..errors import InvalidMessageError
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, normalize_tool_choice, normalize_tools

__all__ = ["ToolCallConstraint", "build_structural_tag", "clear_caches"]

#: Longest run of JSON whitespace allowed between tokens of the arguments (stops whitespace loops).
MAX_JSON_WHITESPACE = 1  # json.dumps spacing only: pretty-printing costs a small model many tokens
_TOKENIZER_CACHE_SIZE = 4
_GRAMMAR_CACHE_SIZE = 32
_lock = threading.Lock()
# (id(tokenizer), vocab_size, stop ids) -> (tokenizer, TokenizerInfo, GrammarCompiler); the tokenizer is
# kept alive by the entry so its id cannot be reused while cached.
_compilers: OrderedDict[Hashable, tuple[Any, xgr.TokenizerInfo, xgr.GrammarCompiler]] = OrderedDict()
_grammars: OrderedDict[Hashable, tuple[Any, xgr.CompiledGrammar]] = OrderedDict()  # key -> (tokenizer, grammar)


def clear_caches() -> None:
    """Drop every cached TokenizerInfo, compiler and compiled grammar."""
    with _lock:
        _compilers.clear()
        _grammars.clear()


def _lru_get(cache: OrderedDict, key: Hashable) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key: Hashable, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def _compiler(tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> tuple[xgr.TokenizerInfo, xgr.GrammarCompiler]:
    key = (id(tokenizer), vocab_size, stop_ids)
    with _lock:
        hit = _lru_get(_compilers, key)
        if hit is not None and hit[0] is tokenizer:
            return hit[1], hit[2]
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
    # xgrammar's own cache is unbounded; ours is an LRU, so turn the compiler's off.
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    with _lock:
        _lru_put(_compilers, key, (tokenizer, info, compiler), _TOKENIZER_CACHE_SIZE)
    return info, compiler


def _tag(tool: dict[str, Any]) -> TagFormat:
    return TagFormat(
        begin=TOOL_CALL_OPEN + '\n{"name": "' + tool["name"] + '", "arguments": ',
        content=JSONSchemaFormat(json_schema=tool["parameters"], max_whitespace_cnt=MAX_JSON_WHITESPACE),
        end="}\n" + TOOL_CALL_CLOSE,
    )


def build_structural_tag(tools: list[dict[str, Any]], mode: str, name: str | None = None, *,
                         parallel_tool_calls: bool = True) -> StructuralTag:
    """The xgrammar structural tag for normalized ``tools`` under ``mode`` (see module docstring).

    With ``parallel_tool_calls=False`` at most one call is allowed ("auto") / exactly one ("required").
    """
    single = not parallel_tool_calls
    if mode == "forced":
        return StructuralTag(format=_tag(next(t for t in tools if t["name"] == name)))
    tags = [_tag(t) for t in tools]
    if mode == "required":
        return StructuralTag(format=TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True,
                                                                  stop_after_first=single))
    if mode == "auto":
        return StructuralTag(format=TriggeredTagsFormat(triggers=[TOOL_CALL_OPEN], tags=tags,
                                                              stop_after_first=single))
    raise ValueError(f"no grammar for tool-choice mode {mode!r}")


class ToolCallConstraint:
    """Constrains one assistant turn to the tool-call format for ``tools`` and ``tool_choice``.

    ``vocab_size`` is the model's logits size (may differ from ``len(tokenizer)``); ``eos_token_id``
    (an id or several) ends the turn and is the only token allowed once the grammar is complete and
    cannot continue, or after end-of-turn was accepted. ``parallel_tool_calls=False`` limits the turn to
    one call (small models tend to repeat calls otherwise). One instance serves one turn; ``reset()``
    reuses it for another.
    """

    def __init__(self, tokenizer: Any, tools: Iterable[Any], tool_choice: Any = "auto", *,
                 vocab_size: int, eos_token_id: int | Iterable[int], parallel_tool_calls: bool = True) -> None:
        self.tools = normalize_tools(tools)
        self.mode, self.forced_name = normalize_tool_choice(tool_choice, self.tools)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos or not all(isinstance(e, int) and 0 <= e < vocab_size for e in eos):
            raise ValueError(f"eos_token_id must be token id(s) below vocab_size={vocab_size}, got {eos_token_id!r}")
        self.vocab_size = int(vocab_size)
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        self._eos_index = torch.tensor(self.eos_ids)
        self._tokenizer = tokenizer
        self._matcher: xgr.GrammarMatcher | None = None
        self._eos_seen = False
        if self.mode == "none":
            return
        info, compiler = _compiler(tokenizer, self.vocab_size, self.eos_ids)
        tools_key = json.dumps(self.tools, sort_keys=True)
        self.parallel_tool_calls = bool(parallel_tool_calls)
        key = (id(tokenizer), self.vocab_size, self.eos_ids, tools_key, self.mode, self.forced_name,
               self.parallel_tool_calls)
        with _lock:
            hit = _lru_get(_grammars, key)
        grammar = hit[1] if hit is not None and hit[0] is tokenizer else None
        if grammar is None:
            tag = build_structural_tag(self.tools, self.mode, self.forced_name,
                                       parallel_tool_calls=self.parallel_tool_calls)
            try:
                grammar = compiler.compile_structural_tag(tag)
            except Exception as exc:  # xgrammar rejects schemas it cannot handle
                raise InvalidMessageError(f"cannot build a tool-call grammar for these tools: {exc}") from exc
            with _lock:
                _lru_put(_grammars, key, (tokenizer, grammar), _GRAMMAR_CACHE_SIZE)
        self._grammar_vocab = info.vocab_size
        self._matcher = xgr.GrammarMatcher(grammar, override_stop_tokens=list(self.eos_ids))
        self._bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        self._bitmask_fresh = False
        self._need_apply = True
        words = [0] * self._bitmask.shape[1]
        for e in self.eos_ids:  # bit e of the packed 32-bit words
            words[e // 32] |= 1 << (e % 32)
        self._stop_bitmask = torch.tensor([[w - (1 << 32) if w >= 1 << 31 else w for w in words]],
                                          dtype=self._bitmask.dtype)
        self._valid_bits = xgr.allocate_token_bitmask(1, info.vocab_size)  # all ones but the padding bits
        if info.vocab_size % 32:
            self._valid_bits[0, -1] = (1 << (info.vocab_size % 32)) - 1

    def _fill(self) -> None:
        if not self._bitmask_fresh:
            assert self._matcher is not None
            self._need_apply = bool(self._matcher.fill_next_token_bitmask(self._bitmask))
            self._bitmask_fresh = True

    def _terminated(self) -> bool:
        return self._eos_seen or (self._matcher is not None and self._matcher.is_terminated())

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Set the logits of disallowed next tokens to -inf in place (1-D, model vocab) and return them."""
        if logits.dim() != 1:
            raise ValueError(f"mask_logits expects 1-D logits, got shape {tuple(logits.shape)}")
        if self._matcher is None and not self._eos_seen:
            return logits
        if self._terminated():
            keep = logits[self._eos_index.to(logits.device)].clone()
            logits.fill_(float("-inf"))
            logits[self._eos_index.to(logits.device)] = keep
            return logits
        self._fill()
        n = min(logits.shape[0], self._grammar_vocab)
        if logits.shape[0] > n:  # ids the grammar's vocabulary does not know
            logits[n:] = float("-inf")
        if self._need_apply:
            xgr.apply_token_bitmask_inplace(logits[None], self._bitmask.to(logits.device), vocab_size=n)
        return logits

    def accept(self, token_id: int) -> None:
        """Advance past the sampled token; raises InvalidMessageError if the grammar forbids it."""
        token_id = int(token_id)
        if self._terminated():
            if token_id in self.eos_ids:
                return
            raise InvalidMessageError(f"token {token_id} after end of turn; the tool-call turn is over")
        if self._matcher is None:
            self._eos_seen = token_id in self.eos_ids
            return
        if not self._matcher.accept_token(token_id):
            piece = self._tokenizer.decode([token_id]) if 0 <= token_id < self.vocab_size else "?"
            raise InvalidMessageError(f"token {token_id} ({piece!r}) is not allowed here by the tool-call grammar "
                                      f"(tool_choice mode {self.mode!r})")
        self._bitmask_fresh = False
        if token_id in self.eos_ids:
            self._eos_seen = True

    def is_finished(self) -> bool:
        """True once end-of-turn was accepted or is the only token the grammar allows next."""
        if self._terminated():
            return True
        if self._matcher is None:
            return False
        self._fill()
        return bool(torch.equal(self._bitmask & self._valid_bits, self._stop_bitmask))

    def reset(self) -> None:
        """Back to the start of a turn (same tools and tool choice)."""
        self._eos_seen = False
        if self._matcher is not None:
            self._matcher.reset()
            self._bitmask_fresh = False
