"""Token-by-token decoding with a KV cache and a carried δ-state (the runtime's only generation loop).

`Engine.forward` feeds tokens (with their message ids) through the model, updating the KV cache and the
δ-state; it works with δ-mem attached or not (plain backbone baselines use the same loop). `Engine.generate`
prefills a prompt and then samples one token at a time, feeding each generated token back with the
assistant message's id (so it is written like any other token), honouring greedy / temperature / top-k /
top-p sampling with a seed, stop sequences, `max_new_tokens`, and an optional logits constraint (the
grammar of a forced tool call). The final end-of-turn token is not fed; the session feeds the template's
closing tokens when it commits the reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor

from ..core.state import DeltaState
from ..patching.attach import is_attached
from ..patching.forward import forward_with_state
from ..patching.hf_cache import cache_kwargs, output_cache


class LogitsConstraint(Protocol):
    def mask_logits(self, logits: Tensor) -> Tensor: ...
    def accept(self, token_id: int) -> None: ...
    def is_finished(self) -> bool: ...


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"invalid generation settings {self}")


@dataclass
class Cursor:
    """Where a conversation's model-side context stands: KV cache, δ-state, tokens in the cache."""

    cache: Any
    state: DeltaState | None
    tokens: list[int] = field(default_factory=list)
    write: bool = True  # False: the state is read but never written (evaluation controls; the runtime always writes)


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # "stop" | "length" | "tool_calls"
    prompt_tokens: int = 0
    n_fed: int = 0  # generated tokens fed back into the cache/state (the stop or end-of-turn token never is)


class Engine:
    """Runs one loaded model for many conversations; holds no per-conversation data itself.

    `growing_kv` (default on): KV caches grow in steps instead of one `torch.cat` of the whole cache per
    token (runtime/kv_cache.py; same outputs); off: transformers' plain `DynamicCache`."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: tuple[int, ...] | None = None, *,
                 growing_kv: bool = True) -> None:
        self.model, self.tok = model, tokenizer
        eos = eos_ids or (tokenizer.eos_token_id,)
        self.eos_ids = tuple(int(e) for e in eos if e is not None)
        self.device = next(model.parameters()).device
        self.growing_kv = growing_kv

    def new_cache(self) -> Any:
        """An empty KV cache for this model (a transformers `DynamicCache`)."""
        if self.growing_kv:
            from .kv_cache import growing_cache

            return growing_cache(self.model.config)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def new_cursor(self, state: DeltaState | None, *, write: bool = True) -> Cursor:
        return Cursor(self.new_cache(), state, [], write)

    @torch.inference_mode()
    def forward(self, cur: Cursor, ids: list[int], mids: list[int], *, write: bool = True,
                generated: bool = False) -> Tensor:
        """Feed `ids` after what `cur` holds; returns the last position's logits [V] (fp32). `generated` tokens
        are written into the δ layers but not into a copy channel (a reply does not copy its own tokens)."""
        if not ids:
            raise ValueError("nothing to feed")
        x = torch.tensor([ids], device=self.device)
        pos = torch.arange(len(cur.tokens), len(cur.tokens) + len(ids), device=self.device)[None]
        kw = dict(**cache_kwargs(self.model, cur.cache), use_cache=True, position_ids=pos, logits_to_keep=1)
        if is_attached(self.model) and cur.state is not None:
            out = forward_with_state(self.model, x, cur.state, message_ids=torch.tensor([mids], device=self.device),
                                     write=write and cur.write, copy_write=not generated, **kw)
            cur.state = out.state
            outputs = out.outputs
        else:
            outputs = self.model(input_ids=x, **kw)
        cur.cache = output_cache(outputs)
        cur.tokens.extend(ids)
        return outputs.logits[0, -1].float()

    def _pick(self, logits: Tensor, cfg: GenerationConfig, gen: torch.Generator | None, seen: list[int]) -> int:
        if cfg.repetition_penalty != 1.0 and seen:
            idx = torch.tensor(sorted(set(seen)), device=logits.device)
            vals = logits[idx]
            logits[idx] = torch.where(vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty)
        if cfg.temperature == 0.0:
            return int(torch.argmax(logits))
        logits = logits / cfg.temperature
        if cfg.top_k:
            kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if cfg.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            drop = sp.cumsum(0) - sp > cfg.top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, si, sp)
        return int(torch.multinomial(probs, 1, generator=gen))

    def stream(self, cur: Cursor, prompt_ids: list[int], prompt_mids: list[int], msg_id: int,
               cfg: GenerationConfig, constraint: LogitsConstraint | None = None,
               result: Generation | None = None) -> Iterator[str]:
        """Prefill the prompt, then yield text deltas; `result` is filled in as decoding goes."""
        res = result if result is not None else Generation()
        res.prompt_tokens = len(prompt_ids)
        if not prompt_ids:
            raise ValueError("generation needs a non-empty prompt")
        logits = self.forward(cur, prompt_ids, prompt_mids)
        yield from self.decode(cur, logits, msg_id, cfg, constraint, res)

    def decode(self, cur: Cursor, logits: Tensor, msg_id: int, cfg: GenerationConfig,
               constraint: LogitsConstraint | None, res: Generation) -> Iterator[str]:
        """Sample from `logits` onwards, feeding each kept token back with message id `msg_id`."""
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed) if cfg.seed is not None else None
        emitted = ""
        for _ in range(cfg.max_new_tokens):
            if constraint is not None:
                logits = constraint.mask_logits(logits)
            tok = self._pick(logits.cpu(), cfg, gen, res.token_ids)
            if constraint is not None:
                constraint.accept(tok)
            if tok in self.eos_ids:
                res.finish_reason = "stop"
                break
            res.token_ids.append(tok)
            text = self.tok.decode(res.token_ids, skip_special_tokens=True)
            cut = _stop_cut(text, cfg.stop)
            if cut is not None:
                res.text, res.finish_reason = text[:cut], "stop"
                if len(res.text) > len(emitted):
                    yield res.text[len(emitted):]
                return
            res.text = text
            if not text.endswith("\ufffd") and len(text) > len(emitted):  # hold back half a UTF-8 character
                yield text[len(emitted):]
                emitted = text
            if len(res.token_ids) == cfg.max_new_tokens:
                break  # the last token is kept but not fed: the session feeds the reply's closing tokens
            logits = self.forward(cur, [tok], [msg_id], generated=True)
            res.n_fed += 1
        else:
            res.finish_reason = "length"
        res.text = self.tok.decode(res.token_ids, skip_special_tokens=True)
        if len(res.text) > len(emitted):
            yield res.text[len(emitted):]

    def generate(self, cur: Cursor, prompt_ids: list[int], prompt_mids: list[int], msg_id: int,
                 cfg: GenerationConfig, constraint: LogitsConstraint | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        res = Generation()
        for delta in self.stream(cur, prompt_ids, prompt_mids, msg_id, cfg, constraint, res):
            if on_text:
                on_text(delta)
        return res


def _stop_cut(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
