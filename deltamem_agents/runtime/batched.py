"""Batched decoding: several conversations' generations advance together, one forward per step.

Each job is one conversation's `Cursor` (its KV cache, δ-state and tokens) plus a prompt suffix to feed and
the generation settings. `BatchedDecoder.generate` runs them as one batch:
- the δ-states are stacked on the batch dimension (`DeltaState.stack`), the KV caches are copied into one
  left-padded batch cache, and the suffixes are right-aligned after them, so every row's layout is
  [padding | its cache | padding | its suffix]; the 2-D attention mask marks the padding, which is then
  neither attended to nor written into any δ-state (patching/forward.py builds the write mask from it);
- each row keeps its own positions (RoPE sees exactly the positions it would see alone);
- every step feeds one token per unfinished row; a row that finishes leaves the batch at once and its
  cursor gets back an unpadded cache and its own δ-state, so the conversation continues like after
  `Engine.decode`.
Sampling, stop sequences, constraints and the fed/not-fed rules are those of `Engine.decode`, row by row, so
each result equals decoding that conversation alone (up to float rounding of batched matrix products).

`respond_batch` is `SessionRunner.respond` for several conversations at once, and `TurnBatcher` collects
concurrent turns from many threads for a few milliseconds and runs them as one batch on a worker thread.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor

from ..core.state import DeltaState
from ..patching.attach import is_attached
from ..patching.forward import forward_with_state
from ..patching.hf_cache import cache_kwargs, output_cache
from .decode import Cursor, Engine, Generation, GenerationConfig, LogitsConstraint, _stop_cut
from .session import Conversation, PreparedTurn, SessionRunner


@dataclass
class DecodeJob:
    """One conversation's generation: feed `prompt_ids` (message ids `prompt_mids`) after what `cursor` holds,
    then generate with message id `msg_id`. The cursor is updated in place, as `Engine.stream` does."""

    cursor: Cursor
    prompt_ids: list[int]
    prompt_mids: list[int]
    msg_id: int
    cfg: GenerationConfig = field(default_factory=GenerationConfig)
    constraint: LogitsConstraint | None = None
    on_text: Callable[[str], None] | None = None  # text deltas, called on the decoding thread
    result: Generation = field(default_factory=Generation)
    before: DeltaState | None = None  # filled in: the δ-state after the prompt, before any generated token


class _Row:
    """`Engine.decode`'s per-token logic, driven one step at a time from outside."""

    def __init__(self, job: DecodeJob, engine: Engine) -> None:
        self.job, self.engine, self.res = job, engine, job.result
        cfg = job.cfg
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed) if cfg.seed is not None else None
        self.emitted = ""
        self.done = False

    def _emit(self, text: str) -> None:
        if self.job.on_text is not None and text:
            self.job.on_text(text)

    def _finish(self, final_text: bool = True) -> None:
        if final_text:
            self.res.text = self.engine.tok.decode(self.res.token_ids, skip_special_tokens=True)
        if len(self.res.text) > len(self.emitted):
            self._emit(self.res.text[len(self.emitted):])
            self.emitted = self.res.text
        self.done = True

    def step(self, logits: Tensor) -> int | None:
        """Pick the next token from `logits`; return it if it is to be fed, None when the row is finished."""
        job, res, cfg = self.job, self.res, self.job.cfg
        if len(res.token_ids) >= cfg.max_new_tokens:  # max_new_tokens == 0
            res.finish_reason = "length"
            self._finish()
            return None
        if job.constraint is not None:
            logits = job.constraint.mask_logits(logits)
        tok = self.engine._pick(logits.cpu(), cfg, self.gen, res.token_ids)
        if job.constraint is not None:
            job.constraint.accept(tok)
        if tok in self.engine.eos_ids:
            res.finish_reason = "stop"
            self._finish()
            return None
        res.token_ids.append(tok)
        text = self.engine.tok.decode(res.token_ids, skip_special_tokens=True)
        cut = _stop_cut(text, cfg.stop)
        if cut is not None:
            res.text, res.finish_reason = text[:cut], "stop"
            self._finish(final_text=False)
            return None
        res.text = text
        if not text.endswith("\ufffd") and len(text) > len(self.emitted):  # hold back half a UTF-8 character
            self._emit(text[len(self.emitted):])
            self.emitted = text
        if len(res.token_ids) == cfg.max_new_tokens:
            res.finish_reason = "length"
            self._finish()  # the last token is kept but not fed
            return None
        res.n_fed += 1
        return tok


class BatchedDecoder:
    """Decodes many conversations' jobs together on one loaded model; holds no per-conversation data.

    All jobs of one call must agree on whether they carry a δ-state (all or none); `Cursor.write=False`
    rows read their state without writing it (their tokens are fed with message id -1)."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: tuple[int, ...] | None = None, *,
                 engine: Engine | None = None, pad_id: int = 0) -> None:
        self.engine = engine if engine is not None else Engine(model, tokenizer, eos_ids)
        self.model, self.tok = self.engine.model, self.engine.tok
        self.device = self.engine.device
        self.pad_id = pad_id

    # --- batched forward ------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, cursors: list[Cursor], ids: list[list[int]], mids: list[list[int]]) -> Tensor:
        """Feed `ids[b]` after what `cursors[b]` holds, for every b in one forward; returns the last real
        position's logits per row [B,V] (fp32). Each cursor ends up as after `Engine.forward`."""
        batch = _Batch.open(self, cursors, ids, mids)
        logits = batch.logits
        batch.close_all()
        return logits

    # --- generation -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, jobs: list[DecodeJob]) -> list[Generation]:
        """Prefill every job's prompt and decode all of them together; returns each job's `Generation`."""
        if not jobs:
            return []
        for j in jobs:
            if not j.prompt_ids:
                raise ValueError("generation needs a non-empty prompt")
            j.result.prompt_tokens = len(j.prompt_ids)
        batch = _Batch.open(self, [j.cursor for j in jobs], [j.prompt_ids for j in jobs],
                            [j.prompt_mids for j in jobs])
        rows = [_Row(j, self.engine) for j in jobs]
        for j, st in zip(jobs, batch.row_states()):
            j.before = st
        logits = batch.logits
        while True:
            feed: list[int] = []
            keep: list[int] = []
            for i, b in enumerate(batch.rows):
                tok = rows[b].step(logits[i])
                if tok is None:
                    batch.close(i)
                else:
                    keep.append(i)
                    feed.append(tok)
            if not keep:
                break
            batch.select(keep)
            logits = batch.step(feed, [jobs[b].msg_id for b in batch.rows])
        return [j.result for j in jobs]


class _Batch:
    """The live batch: a left-padded KV cache, its 2-D mask, the stacked δ-state and which job each row is."""

    def __init__(self, dec: BatchedDecoder, cursors: list[Cursor]) -> None:
        self.dec, self.cursors = dec, cursors
        self.rows = list(range(len(cursors)))
        self.closed = [False] * len(cursors)
        self.cache: Any = None
        self.mask: Tensor = torch.zeros(0)
        self.state: DeltaState | None = None
        self.logits: Tensor = torch.zeros(0)

    @classmethod
    def open(cls, dec: BatchedDecoder, cursors: list[Cursor], ids: list[list[int]], mids: list[list[int]]) -> _Batch:
        if not (len(cursors) == len(ids) == len(mids)):
            raise ValueError("cursors, ids and message ids must have one entry per row")
        if len({id(c) for c in cursors}) != len(cursors):
            raise ValueError("a cursor appears twice in one batch; a conversation decodes one turn at a time")
        for t, m in zip(ids, mids):
            if not t or len(t) != len(m):
                raise ValueError("every row needs a non-empty prompt with one message id per token")
        with_state = [c.state is not None for c in cursors]
        if any(with_state) and not all(with_state):
            raise ValueError("a batch mixes conversations with and without a δ-state")
        self = cls(dec, cursors)
        dev = dec.device
        past = [len(c.tokens) for c in cursors]
        for c, n in zip(cursors, past):
            if c.cache.get_seq_length() != n:
                raise ValueError(f"cursor holds {n} tokens but its KV cache {c.cache.get_seq_length()}")
        P, T, B = max(past), max(map(len, ids)), len(cursors)
        self.cache, cache_mask = _stack_caches(dec, [c.cache for c in cursors], past, P)
        x = torch.full((B, T), dec.pad_id, dtype=torch.long)
        mid = torch.full((B, T), -1, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        valid = torch.zeros((B, T), dtype=torch.long)
        for b, (t, m, c) in enumerate(zip(ids, mids, cursors)):
            n = len(t)
            x[b, T - n:] = torch.tensor(t)
            mid[b, T - n:] = torch.tensor(m) if c.write else -1
            pos[b, T - n:] = torch.arange(past[b], past[b] + n)
            valid[b, T - n:] = 1
        self.mask = torch.cat([cache_mask, valid], dim=1).to(dev)
        if all(with_state):
            self.state = DeltaState.stack([c.state for c in cursors]).to(dev)  # type: ignore[misc]
        self.logits = self._run(x.to(dev), mid.to(dev), pos.to(dev))
        for c, t in zip(cursors, ids):
            c.tokens.extend(t)
        return self

    def _run(self, x: Tensor, mids: Tensor, pos: Tensor, generated: bool = False) -> Tensor:
        model = self.dec.model
        kw = dict(**cache_kwargs(model, self.cache), use_cache=True, position_ids=pos, logits_to_keep=1,
                  attention_mask=self.mask)
        if self.state is not None and is_attached(model):
            out = forward_with_state(model, x, self.state, message_ids=mids, write=True, copy_write=not generated,
                                     **kw)
            self.state, outputs = out.state, out.outputs
        else:
            outputs = model(input_ids=x, **kw)
        self.cache = output_cache(outputs)
        return outputs.logits[:, -1].float()

    def step(self, toks: list[int], msg_ids: list[int]) -> Tensor:
        """Feed one token per live row (with its message id); returns the new logits [B,V]."""
        dev = self.dec.device
        n = len(self.rows)
        pos = torch.tensor([[len(self.cursors[b].tokens)] for b in self.rows], device=dev)
        mids = torch.tensor([[m if self.cursors[b].write else -1] for b, m in zip(self.rows, msg_ids)], device=dev)
        self.mask = torch.cat([self.mask, torch.ones(n, 1, dtype=self.mask.dtype, device=dev)], dim=1)
        self.logits = self._run(torch.tensor([[t] for t in toks], device=dev), mids, pos, generated=True)
        for b, t in zip(self.rows, toks):
            self.cursors[b].tokens.append(t)
        return self.logits

    def row_states(self) -> list[DeltaState | None]:
        if self.state is None:
            return [None] * len(self.rows)
        return [self.state.select(i).clone() for i in range(len(self.rows))]

    def close(self, i: int) -> None:
        """Hand row i's unpadded KV cache and δ-state back to its cursor (the row stays until `select`)."""
        b = self.rows[i]
        if self.closed[b]:
            return
        cur = self.cursors[b]
        cur.cache = _unstack_row(self.dec, self.cache, i, self.mask[i].bool())
        if self.state is not None:
            if cur.write:  # a read-only row keeps its state as it came in (as `Engine.forward` does)
                cur.state = self.state.select(i).clone()
        self.closed[b] = True

    def close_all(self) -> None:
        for i in range(len(self.rows)):
            self.close(i)

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into the current rows), dropping finished ones from the batch."""
        if len(keep) == len(self.rows):
            return
        idx = torch.tensor(keep, device=self.dec.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        if self.state is not None:
            self.state = self.state.rows(idx)  # copy-channel tensors included
        self.rows = [self.rows[i] for i in keep]


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"batched decoding needs a layered transformers cache, got {type(cache).__name__}")
    return layers


def _stack_caches(dec: BatchedDecoder, caches: list[Any], lens: list[int], P: int) -> tuple[Any, Tensor]:
    """One cache of width P holding row b's first lens[b] positions right-aligned; mask [B,P] of real ones."""
    B = len(caches)
    mask = torch.zeros(B, P, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, P - n:] = 1
    out = dec.engine.new_cursor(None).cache
    if P == 0:
        return out, mask
    ref = _layers(caches[lens.index(P)])
    for li, layer in enumerate(ref):
        if getattr(layer, "is_sliding", False):
            raise TypeError("batched decoding does not support sliding-window cache layers")
        k0, v0 = layer.keys, layer.values
        keys = k0.new_zeros(B, k0.shape[1], P, k0.shape[3])
        vals = v0.new_zeros(B, v0.shape[1], P, v0.shape[3])
        for b, (c, n) in enumerate(zip(caches, lens)):
            if n:
                lay = _layers(c)[li]
                keys[b, :, P - n:] = lay.keys[0, :, :n]
                vals[b, :, P - n:] = lay.values[0, :, :n]
        out.update(keys, vals, li)
    return out, mask


def _unstack_row(dec: BatchedDecoder, cache: Any, i: int, real: Tensor) -> Any:
    """Row i's real positions (`real` [P] bool) of the batch cache as a fresh batch-of-one cache."""
    out = dec.engine.new_cursor(None).cache
    cols = real.nonzero().squeeze(1)
    for li, layer in enumerate(_layers(cache)):
        out.update(layer.keys[i:i + 1, :, cols].clone(), layer.values[i:i + 1, :, cols].clone(), li)
    return out


# --- session turns ------------------------------------------------------------------------------------------
@dataclass
class Turn:
    """One conversation's turn for `respond_batch`: the arguments of `SessionRunner.respond`."""

    conv: Conversation
    new: list[dict[str, Any]]
    cfg: GenerationConfig = field(default_factory=GenerationConfig)
    constraint: LogitsConstraint | None = None
    result: Generation = field(default_factory=Generation)
    on_text: Callable[[str], None] | None = None
    error: BaseException | None = None  # set when this turn failed (the others still ran)


def respond_batch(runner: SessionRunner, decoder: BatchedDecoder, turns: list[Turn]) -> None:
    """`SessionRunner.respond` for several conversations (all different) at once: their prompts and replies
    are decoded as one batch, then each reply is committed as `respond` commits it. A turn whose input is
    invalid gets `error` set and leaves its conversation as it was; if the batch itself fails, every turn
    of it gets the error (their conversations then need the caller's usual rollback)."""
    if len({id(t.conv) for t in turns}) != len(turns):
        raise ValueError("a conversation appears twice in one batch")
    ready: list[tuple[Turn, DecodeJob, PreparedTurn]] = []
    for t in turns:
        snapshot = (len(t.conv.messages), t.conv.window_start, t.conv.state, t.conv.cursor)
        try:
            prep = runner.prepare(t.conv, t.new, t.cfg)
            job = DecodeJob(t.conv.cursor, prep.ids, prep.mids, prep.reply_id, t.cfg, t.constraint, t.on_text,
                            t.result)
        except Exception as exc:  # bad input fails this turn only
            del t.conv.messages[snapshot[0]:]
            t.conv.window_start, t.conv.state, t.conv.cursor = snapshot[1:]
            t.error = exc
            continue
        ready.append((t, job, prep))
    if not ready:
        return
    try:
        decoder.generate([job for _, job, _ in ready])
        for t, job, prep in ready:
            job.result.prompt_tokens = len(job.cursor.tokens) - job.result.n_fed  # as `respond` counts it
            runner.finish(t.conv, prep, job.result, job.before)
    except BaseException as exc:
        for t, *_ in ready:
            t.error = exc
        raise


class _Pending:
    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.deltas: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.done = Future()  # type: Future[Generation]
        turn.on_text = self.deltas.put


class TurnBatcher:
    """Collects concurrent turns (from any threads) for up to `wait_ms` and runs them as one batch.

    `respond(conv, new, cfg, constraint, result)` is a drop-in for `SessionRunner.respond` that yields the
    reply's text deltas while the turn decodes on the batcher's worker thread, together with whatever other
    turns arrived meanwhile (at most `max_batch`). The worker holds `lock` (e.g. the model lock) around each
    batch; callers must not hold it while they wait. The same conversation is never in a batch twice."""

    def __init__(self, runner: SessionRunner, *, decoder: BatchedDecoder | None = None, max_batch: int = 8,
                 wait_ms: float = 5.0, lock: ContextManager[Any] | None = None) -> None:
        if max_batch < 1 or wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and wait_ms >= 0")
        self.runner = runner
        self.decoder = decoder or BatchedDecoder(runner.engine.model, runner.engine.tok, engine=runner.engine)
        self.max_batch, self.wait = max_batch, wait_ms / 1000.0
        self.lock = lock if lock is not None else nullcontext()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._held: list[_Pending] = []
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="deltamem-batcher", daemon=True)
        self._worker.start()
        self.batches: list[int] = []  # sizes of the batches run (diagnostics)

    def submit(self, conv: Conversation, new: list[dict[str, Any]], cfg: GenerationConfig,
               constraint: LogitsConstraint | None = None, result: Generation | None = None) -> _Pending:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        p = _Pending(Turn(conv, new, cfg, constraint, result if result is not None else Generation()))
        self._queue.put(p)
        return p

    def respond(self, conv: Conversation, new: list[dict[str, Any]], cfg: GenerationConfig,
                constraint: LogitsConstraint | None = None, result: Generation | None = None) -> Iterator[str]:
        p = self.submit(conv, new, cfg, constraint, result)
        try:
            while True:
                d = p.deltas.get()
                if d is None:
                    break
                yield d
        finally:
            p.done.exception()  # the conversation is the worker's until its turn is over
        p.done.result()

    def generate(self, conv: Conversation, new: list[dict[str, Any]], cfg: GenerationConfig,
                 constraint: LogitsConstraint | None = None) -> Generation:
        res = Generation()
        for _ in self.respond(conv, new, cfg, constraint, res):
            pass
        return res

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._worker.join()

    def _collect(self) -> list[_Pending] | None:
        batch: list[_Pending] = []
        convs: set[int] = set()
        held, self._held = self._held, []
        for p in held:
            (self._held if id(p.turn.conv) in convs or len(batch) >= self.max_batch else batch).append(p)
            convs.add(id(p.turn.conv))
        if not batch:
            p = self._queue.get()
            if p is None:
                return None
            batch.append(p)
            convs.add(id(p.turn.conv))
        deadline = time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                p = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if p is None:
                self._queue.put(None)
                break
            if id(p.turn.conv) in convs:
                self._held.append(p)  # the same conversation's next turn waits for this one
            else:
                batch.append(p)
                convs.add(id(p.turn.conv))
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                for p in self._held:
                    p.deltas.put(None)
                    p.done.set_exception(RuntimeError("the batcher was closed"))
                return
            self.batches.append(len(batch))
            try:
                with self.lock:
                    respond_batch(self.runner, self.decoder, [p.turn for p in batch])
            except BaseException:  # noqa: BLE001 - every turn of the batch carries the error
                pass
            for p in batch:
                p.deltas.put(None)
                if p.turn.error is not None:
                    p.done.set_exception(p.turn.error)
                else:
                    p.done.set_result(p.turn.result)
