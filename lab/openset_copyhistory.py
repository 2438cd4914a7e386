"""The copy read path with learned writes: every token of a real history offered to the state, a learned write gate.

`lab.openset_copyhead` measures the copy read path with oracle writes (only the value's tokens are written). Here
every token of every message of a history (chit-chat with other people's names, places and numbers, the fact
stated by the user or returned by a tool, more chit-chat up to a distance) is offered to the state, and the write
strength β_t = σ(w_β·h_{t-1} + b_β) decides what is kept. The head is trained on the answer's cross-entropy plus a
gate-supervision term (binary cross-entropy of β's logit: 1 on the value's tokens of the fact message, 0 elsewhere),
on short histories; it is evaluated at 500 and 2000 tokens after the fact, on held-out values, wordings and
relation types and on hand-written probes, against the same head with another episode's state: exact recall of the
bare value, and free-form greedy replies (value contained) beside the backbone with the fact right before the
question (the ceiling).

Training answers are the bare value or short sentences around it (`--answers`); `--distill W` adds context
distillation: the teacher is the frozen backbone with the fact turn right before the question, its greedy reply is
the student's target sequence, and the loss is the KL from the teacher's top-k distribution at each reply position
to the student's (backbone without the fact + the copy read), on histories whose teacher reply contains the value.

Each message's hidden states come from the frozen backbone reading that message after the system prompt (the
message alone), as a runtime that writes message by message with a short window sees it. So a message's features
do not depend on its history: the chit-chat is drawn from a bank of exchanges (one for training, one for
evaluation, different seeds) whose features are computed once, and a 2,000-token history costs only its fact.

    python -m lab.openset_copyhistory --rank 64 --steps 300 --out runs/copyhist/r64       # resumable
    python -m lab.openset_copyhistory --rank 64 --answers sentence --distill 1 --out runs/copyhist/r64_kd
    python -m lab.openset_copyhistory --report runs/copyhist
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from deltamem_agents.backbone import load_backbone
from deltamem_agents.datasets.distractors import distractor, faker_for, mentions
from deltamem_agents.datasets.handwritten import handwritten_facts
from deltamem_agents.datasets.openset import Fact, sample_fact
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.replay import IGNORE

from .copy_generate import generate_batch
from .openset_copyhead import ANSWERS, CopyHead, Feats, head_for
from .openset_readpath import _overlap, _pad, build, load_ckpt, save_ckpt

_ACKS = ("Noted.", "Got it, thanks.", "Okay, I'll keep that in mind.", "Thanks for letting me know.")


@dataclass
class Hist:
    fact: Fact
    messages: list[dict]
    fact_index: int
    tokens_after: int


Bank = list[tuple[str, str, int]]  # chit-chat exchanges: (user, assistant, content tokens of both)


def make_bank(seed: int, n: int, tok) -> Bank:
    """`n` chit-chat exchanges from the distractor pools (other people's names, places, numbers), seeded."""
    rng, used = random.Random(seed), set()
    fake = faker_for(seed)
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [(u, a, count(u) + count(a)) for u, a in (distractor(rng, fake, [], used) for _ in range(n))]


def history(rng: random.Random, split: str, distance: int, bank: Bank, heldout_types: bool = False,
            fact: Fact | None = None) -> Hist:
    """0–2 exchanges, the fact (a tool's result follows a request), an acknowledgement, then exchanges until
    `distance` content tokens follow the fact. Exchanges are drawn without repetition from `bank`, skipping any
    that mentions the value."""
    fact = fact or sample_fact(rng, split, heldout_types=heldout_types)
    pat = mentions([fact.value])
    pick = (bank[i] for i in rng.sample(range(len(bank)), len(bank)) if not pat.search(f"{bank[i][0]} {bank[i][1]}"))
    msgs: list[dict] = []
    for _ in range(rng.randint(0, 2)):
        u, a, _n = next(pick)
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    role = "tool" if fact.speaker == "tool" else "user"
    if role == "tool":
        msgs.append({"role": "user", "content": rng.choice(("Can you look that up?", "Please check.", "Look it up."))})
    fact_index = len(msgs)
    ack = rng.choice(_ACKS)
    msgs += [{"role": role, "content": fact.statement}, {"role": "assistant", "content": ack}]
    n = len(ack) // 4
    while n < distance:
        u, a, k = next(pick)
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        n += k
    return Hist(fact, msgs, fact_index, n)


class Memo:
    """Per-message features, keyed by the message: what the frozen backbone gives reading the message alone after
    the system prompt (the hidden state before each token, and the tokens). A message's features do not depend on
    the history it sits in, so histories sharing exchanges share their computation; saved to and loaded from disk."""

    def __init__(self, path: Path | None = None) -> None:
        self.path, self.d = path, {}
        if path is not None and path.exists():
            self.d = torch.load(path, weights_only=True)

    @staticmethod
    def key(m: dict) -> str:
        return json.dumps(m, sort_keys=True)

    @torch.no_grad()
    def fill(self, model, rend: ChatRenderer, msgs: list[dict], bs: int = 24, quiet: bool = False) -> None:
        todo = {self.key(m): m for m in msgs if self.key(m) not in self.d}
        if not todo:
            return
        items = sorted(todo.items(), key=lambda kv: len(rend.message_ids(kv[1])))
        n_sys = len(rend.system_ids)
        for s in tqdm(range(0, len(items), bs), desc="message features", disable=quiet or len(items) < 4 * bs,
                      leave=False):
            chunk = items[s:s + bs]
            seqs = [rend.system_ids + rend.message_ids(m) for _, m in chunk]
            hs = model.model(input_ids=_pad(seqs, 0), attention_mask=_pad([[1] * len(q) for q in seqs], 0),
                             use_cache=False).last_hidden_state
            for b, ((k, _), q) in enumerate(zip(chunk, seqs)):
                self.d[k] = (hs[b, n_sys - 1:len(q) - 1].float().clone(), torch.tensor(q[n_sys:]))
        if self.path is not None:
            torch.save(self.d, self.path)


def features(model, rend: ChatRenderer, hists: list[Hist], memo: Memo, answers: list[str] | None = None
             ) -> tuple[list[Feats], list[torch.Tensor]]:
    """Per history: every message token as a write candidate (key from the previous position of its own message
    read alone after the system prompt), the read features of its question, and the gate targets (1 on the
    value's tokens in the fact message)."""
    memo.fill(model, rend, [m for h in hists for m in h.messages])
    reads = _read_feats(model, [build(h.fact, rend, a) for h, a in zip(hists, answers or ["{v}"] * len(hists))])
    feats = []
    before = torch.tensor(rend.system_ids[-1:])  # each message is read alone after the system prompt
    for h, (rh, rt, rc) in zip(hists, reads):
        parts = [memo.d[Memo.key(m)] for m in h.messages]
        prev = torch.cat([torch.cat([before, p[1][:-1]]) for p in parts])
        feats.append(Feats(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), rh, rt, prev, rc))
    return feats, [gate_targets(rend, h, memo) for h in hists]


def gate_targets(rend: ChatRenderer, h: Hist, memo: Memo) -> torch.Tensor:
    """1 on the value's tokens in the fact message, 0 on every other message token (messages already in `memo`)."""
    gt: list[float] = []
    for mi, m in enumerate(h.messages):
        tgt = [0.0] * len(memo.d[Memo.key(m)][1])
        if mi == h.fact_index:
            text, _ids, spans = rend.message_block(m)
            a = text.index(h.fact.statement) + h.fact.statement.index(h.fact.value)
            for i in _overlap(spans, a, a + len(h.fact.value)):
                tgt[i] = 1.0
        gt += tgt
    return torch.tensor(gt)


@torch.no_grad()
def _read_feats(model, exs, bs: int = 16):
    out = []
    for i in range(0, len(exs), bs):
        batch = exs[i:i + bs]
        r = model.model(input_ids=_pad([e.read_ids for e in batch], 0),
                        attention_mask=_pad([[1] * len(e.read_ids) for e in batch], 0), use_cache=False).last_hidden_state
        for b, e in enumerate(batch):
            rpos = [t for t in range(len(e.labels) - 1) if e.labels[t + 1] != IGNORE]
            out.append((r[b, rpos].float().clone(), torch.tensor([e.labels[t + 1] for t in rpos]),
                        torch.tensor([e.read_ids[t] for t in rpos])))
    return out


def train_histories(tok, seed: int, n: int, bank_size: int, lo: int, hi: int) -> list[Hist]:
    """The training histories: exchanges from the training bank, lo–hi content tokens after the fact."""
    bank = make_bank(seed * 7_919 + 5, bank_size, tok)
    rng = random.Random(seed * 7_919 + 2)
    return [history(rng, "train", rng.randint(lo, hi), bank) for _ in range(n)]


def train_pool(model, rend, tok, args, root: Path) -> tuple[list[Hist], list[tuple[Feats, torch.Tensor]]]:
    """The training histories (exchanges from a training bank) with their features and gate targets; message
    features are memoised on disk, so a rerun costs only the reads."""
    hs = train_histories(tok, args.seed, args.pool, args.bank, args.train_min, args.train_max)
    memo = Memo(root / f"memo_train_s{args.seed}_b{args.bank}.pt")
    arng = random.Random(args.seed * 7_919 + 3)
    answers = [arng.choice(ANSWERS[args.answers]) for _ in hs]
    pool = []
    for i in tqdm(range(0, len(hs), 64), desc="training features", disable=args.quiet):
        fs, gts = features(model, rend, hs[i:i + 64], memo, answers[i:i + 64])
        pool += list(zip(fs, gts))
    return hs, pool


def _fact_turns(h: Hist) -> list[dict]:
    """The fact message (after its request when a tool returns it) and the acknowledgement."""
    start = h.fact_index - 1 if h.fact.speaker == "tool" else h.fact_index
    return h.messages[start:h.fact_index + 2]


def _question_prompt(rend, h: Hist) -> list[int]:
    return rend.system_ids + rend.message_ids({"role": "user", "content": h.fact.question}) + rend.generation_prompt_ids


def _ceiling_prompt(rend, h: Hist) -> list[int]:
    ids, _ = rend.render(_fact_turns(h) + [{"role": "user", "content": h.fact.question}])
    return rend.system_ids + ids + rend.generation_prompt_ids


def teacher_pool(model, rend, tok, hs: list[Hist], path: Path, topk: int, bs: int = 32) -> list:
    """Context-distillation targets per training history: the frozen backbone with the fact right before the
    question replies greedily; where the reply contains the value, keep the student's read features (hidden states
    of the system prompt, the question and that reply, without the fact) and the teacher's top-k log-probs at every
    reply position and the end token; else None."""
    if path.exists():
        return [None if t is None else tuple(t) for t in torch.load(path, weights_only=True)]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out: list = []
    for i in tqdm(range(0, len(hs), bs), desc="teacher replies"):
        batch = hs[i:i + bs]
        replies, dist = generate_batch(model, [_ceiling_prompt(rend, h) for h in batch], eos, topk=topk)
        for h, r, d in zip(batch, replies, dist):
            if h.fact.value.lower() not in tok.decode(r, skip_special_tokens=True).lower() or len(d) != len(r) + 1:
                out.append(None)  # a wrong teacher, or one cut at max_new before its end token
                continue
            q = _question_prompt(rend, h)
            x = torch.tensor([q + r])
            hid = model.model(input_ids=x, use_cache=False).last_hidden_state[0, len(q) - 1:].float().clone()
            out.append((hid, torch.stack([v for v, _ in d]), torch.stack([j for _, j in d])))
    torch.save(out, path)
    return out


def distill_loss(model, head: CopyHead, S: torch.Tensor, items: list) -> torch.Tensor:
    """KL(teacher ‖ student) on the teacher's top-k support (renormalised), averaged over reply positions."""
    h = torch.cat([t[0] for t in items])
    rows = torch.cat([torch.full((len(t[0]),), b) for b, t in enumerate(items)])
    lp_t = torch.cat([t[1] for t in items]).log_softmax(-1)
    idx = torch.cat([t[2] for t in items])
    q = F.normalize(head.wq(h), dim=-1)
    o = torch.einsum("ndr,nr->nd", S[rows], q)
    logits = model.lm_head(h.to(model.lm_head.weight.dtype)).float() + head.scaled_read(h, o) @ head.E.T
    lp_s = logits.log_softmax(-1).gather(-1, idx)
    return (lp_t.exp() * (lp_t - lp_s)).sum(-1).mean()


def eval_sets(model, rend, tok, n: int, distances: tuple[int, ...], hand: bool = False,
              root: Path | None = None, bank_size: int = 600) -> dict:
    """Evaluation histories (exchanges from an evaluation bank, disjoint seeds from training) and their features
    (bare-answer reads); message features memoised under `root`."""
    bank = make_bank(920_011, bank_size, tok)
    memo = Memo(root / f"memo_eval_b{bank_size}.pt" if root is not None else None)
    sets = {}
    for dist in distances:
        specs = [("held", n, 910_001, False), ("newrel", n // 2, 910_002, True)] + ([("hand", 0, 910_003, False)]
                                                                                   if hand else [])
        for name, m, seed, ht in specs:
            rng = random.Random(seed + dist)
            if name == "hand":
                hs = [history(rng, "heldout", dist, bank, fact=f) for f in handwritten_facts()]
            else:
                hs = [history(rng, "heldout", dist, bank, heldout_types=ht) for _ in range(m)]
            sets[f"{name}_d{dist}"] = (hs, features(model, rend, hs, memo)[0])
    return sets


@torch.no_grad()
def states(head: CopyHead, fs: list[Feats], bs: int = 32) -> torch.Tensor:
    """Every history's state after its writes: [N, d, r]."""
    return torch.cat([head.write(fs[i:i + bs]) for i in range(0, len(fs), bs)])


@torch.no_grad()
def exact(model, head: CopyHead, fs: list[Feats], S: torch.Tensor, bs: int = 32) -> tuple[list[bool], list[float]]:
    """Bare-value exact recall (every value token and the end token the argmax given the gold prefix) and the
    answer's CE per token, reading state S[i] for history i."""
    hits, ces = [], []
    for i in range(0, len(fs), bs):
        fb = fs[i:i + bs]
        logits, tgt, rows = head.logits(model, S[i:i + bs], fb)
        ok = logits.argmax(-1) == tgt
        ce = F.cross_entropy(logits, tgt, reduction="none")
        for b in range(len(fb)):
            hits.append(bool(ok[rows == b].all()))
            ces.append(float(ce[rows == b].mean()))
    return hits, ces


def evaluate(model, head, sets, per: list | None = None, cache: dict | None = None) -> dict:
    """Exact recall with each history's own state and with another's (the previous history's); the states are
    left in `cache` (set name → [N, d, r]) for the free-form evaluation."""
    row: dict = {}
    for name, (hs, fs) in sets.items():
        S = states(head, fs)
        if cache is not None:
            cache[name] = S
        for ctl, St in (("own", S), ("shuffled", S.roll(1, dims=0))):
            hits, ces = exact(model, head, fs, St)
            row[f"{name}_{ctl}"] = round(sum(hits) / len(hits), 4)
            row[f"{name}_{ctl}_ce"] = round(sum(ces) / len(ces), 4)
            if per is not None:
                per += [{"set": name, "control": ctl, "i": i, "kind": h.fact.kind, "relation": h.fact.relation,
                         "speaker": h.fact.speaker, "value": h.fact.value, "tokens_after": h.tokens_after, "hit": x,
                         "ce": c} for i, (h, x, c) in enumerate(zip(hs, hits, ces))]
    return row


def generation_eval(model, tok, rend, head, sets, out: Path, root: Path, cache: dict, bs: int = 32,
                    coverage: float = 0.0) -> dict:
    """Free-form greedy replies to the question alone (the fact nowhere in the prompt), with the history's state and
    with another history's (the previous one's, as in `evaluate`; states from its `cache`), and the ceiling: the
    backbone with the fact turn right before the question (cached in `root`, it does not depend on the head). One
    file per set, so a killed evaluation resumes."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    res = {}
    for name, (hs, fs) in sets.items():
        path = out / f"gen_{name}.jsonl"
        if not path.exists():
            rows = []
            for ctl, S in (("own", cache[name]), ("shuffled", cache[name].roll(1, dims=0))):
                for i in tqdm(range(0, len(hs), bs), desc=f"replies {name} {ctl}", leave=False):
                    replies, _ = generate_batch(model, [_question_prompt(rend, h) for h in hs[i:i + bs]], eos,
                                                head=head, S=S[i:i + bs], coverage=coverage)
                    rows += [_gen_row(h, tok.decode(r, skip_special_tokens=True), ctl) for h, r in zip(hs[i:i + bs], replies)]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cpath = root / f"ceiling_{name}_n{len(hs)}.jsonl"
        if not cpath.exists():
            rows = []
            for i in tqdm(range(0, len(hs), bs), desc=f"ceiling {name}", leave=False):
                replies, _ = generate_batch(model, [_ceiling_prompt(rend, h) for h in hs[i:i + bs]], eos)
                rows += [_gen_row(h, tok.decode(r, skip_special_tokens=True), "ceiling") for h, r in zip(hs[i:i + bs], replies)]
            cpath.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rows = [json.loads(x) for f in (path, cpath) for x in f.read_text().splitlines()]
        for ctl in ("own", "shuffled", "ceiling"):
            hit = [r["hit"] for r in rows if r["control"] == ctl]
            res[f"gen_{name}_{ctl}"] = round(sum(hit) / len(hit), 4)
        leak = leaks(rows)
        res[f"gen_{name}_leak"] = round(sum(leak) / len(leak), 4)
    return res


def leaks(rows: list[dict]) -> list[float]:
    """Per reply with another history's state (`generation_eval` rolls states by one: row i reads row i−1's), 1 if it
    contains a word (≥ 4 characters) of the value that state holds and not of its own value: the read pasting a
    fact that does not answer the question."""
    def words(v: str) -> set[str]:
        return {w for w in re.findall(r"\w+", v.lower()) if len(w) >= 4}

    own = [r for r in rows if r["control"] == "own"]
    out = []
    for i, r in enumerate(r for r in rows if r["control"] == "shuffled"):
        other = words(own[i - 1]["value"]) - words(r["value"])
        out.append(float(any(w in r["reply"].lower() for w in other)))
    return out


def _gen_row(h: Hist, reply: str, control: str) -> dict:
    return {"control": control, "kind": h.fact.kind, "relation": h.fact.relation, "speaker": h.fact.speaker,
            "value": h.fact.value, "tokens_after": h.tokens_after, "reply": reply,
            "hit": h.fact.value.lower() in reply.lower()}


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_backbone()
    model.requires_grad_(False)
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    head = CopyHead(model, args.rank, beta_bias=args.beta_bias)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    if args.init and not (out / "ckpt.json").exists():
        t = load_file(str(Path(args.init) / "ckpt.safetensors"))
        head.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("p.")}, strict=False)
        with torch.no_grad():
            head.beta.bias.fill_(args.beta_bias)
    step = load_ckpt(out, head, opt)
    (out / "meta.json").write_text(json.dumps({"rank": args.rank, "bytes": head.d * args.rank * 4,
                                               "args": vars(args)}, indent=1))
    distances = tuple(int(x) for x in args.distances.split(","))
    hs, pool = train_pool(model, rend, tok, args, out.parent)
    teacher = teacher_pool(model, rend, tok, hs, out.parent / f"teacher_s{args.seed}_n{args.pool}_b{args.bank}_k{args.topk}.pt",
                           args.topk) if args.distill else [None] * len(hs)
    if args.distill:
        tqdm.write(f"teacher replies containing the value: {sum(t is not None for t in teacher)}/{len(teacher)}")
    quick = eval_sets(model, rend, tok, args.n_quick, (distances[0],), root=out.parent)
    log = out / "log.jsonl"
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"copyhist r{args.rank}", disable=args.quiet)
    while step < args.steps:
        if step % args.every == 0:
            row = {"step": step, "s": round(time.time() - t0), "beta_bias": round(head.beta.bias.item(), 3)}
            row |= evaluate(model, head, quick)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(json.dumps(row))
        rng = random.Random(args.seed * 1_000_003 + step)
        pick = rng.sample(range(len(pool)), args.batch)
        fs, gts = [pool[i][0] for i in pick], [pool[i][1] for i in pick]
        S = head.write(fs)
        logits, tgt, _ = head.logits(model, S, fs)
        loss_ce = F.cross_entropy(logits, tgt)
        blog = head.beta(torch.cat([f.key_h for f in fs])).squeeze(-1)
        gt = torch.cat(gts)
        pos_w = (gt.numel() - gt.sum()) / gt.sum().clamp(min=1)
        loss_gate = F.binary_cross_entropy_with_logits(blog, gt, pos_weight=pos_w.clamp(max=args.max_pos_weight))
        loss = loss_ce + args.gate_weight * loss_gate
        kd = [(b, teacher[i]) for b, i in enumerate(pick) if teacher[i] is not None]
        loss_kd = distill_loss(model, head, S[[b for b, _ in kd]], [t for _, t in kd]) if kd else torch.zeros(())
        loss = loss + args.distill * loss_kd
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(ce=f"{loss_ce.item():.3f}", gate=f"{loss_gate.item():.3f}", kd=f"{loss_kd.item():.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(out, step, head, opt)
    bar.close()
    if not args.no_final:
        final_eval(model, tok, rend, [out], args.n_eval, distances)


def _load_head(model, run: Path) -> CopyHead:
    head = head_for(model, json.loads((run / "meta.json").read_text()))
    t = load_file(str(run / "ckpt.safetensors"))
    head.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("p.")}, strict=False)
    return head


def final_eval(model, tok, rend, runs: list[Path], n: int, distances: tuple[int, ...]) -> None:
    """Distance by distance (features computed once, cached beside the runs, shared by every run): exact recall of
    the bare value and free-form replies for each run, written to `final_d{dist}.json` and the examples files;
    a finished distance is skipped, so a killed evaluation resumes."""
    heads = {run: _load_head(model, run) for run in runs}
    for dist in distances:
        todo = [r for r in runs if not (r / f"final_d{dist}.json").exists()]
        if not todo:
            continue
        sets = eval_sets(model, rend, tok, n, (dist,), hand=True, root=runs[0].parent)
        for run in todo:
            per: list = []
            cache: dict = {}
            row = {"step": json.loads((run / "ckpt.json").read_text())["step"], "distance": dist}
            row |= evaluate(model, heads[run], sets, per, cache)
            (run / f"final_examples_d{dist}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
            row |= generation_eval(model, tok, rend, heads[run], sets, run, runs[0].parent, cache)
            (run / f"final_d{dist}.json").write_text(json.dumps(row, indent=1))
            tqdm.write(f"{run.name} {json.dumps(row)}")
        del sets


def evaluate_runs(args) -> None:
    torch.set_num_threads(args.threads)
    model, tok = load_backbone()
    model.requires_grad_(False)
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    final_eval(model, tok, rend, [Path(r) for r in args.evaluate], args.n_eval,
               tuple(int(x) for x in args.distances.split(",")))


def report(root: Path) -> str:
    """Per run and evaluation set: exact bare-value recall (own / another's state), free-form replies containing the
    value (own / another's state, the memory difference with a paired interval), the ceiling (the backbone with the
    fact right before the question, same histories), own / ceiling and the leak (`leaks`: replies with another
    history's state that paste a word of its value); then free-form recall by kind."""
    from deltamem_agents.bench.stats import bootstrap_ci, paired_diff_ci

    f = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"  # noqa: E731
    lines = ["| run | set | n | exact own | exact another's | free-form own | free-form another's "
             "| memory (own − another) | ceiling | own / ceiling | leak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    kinds = []
    for d in sorted(p for p in root.iterdir() if list(p.glob("gen_*.jsonl"))):
        exact = [json.loads(x) for e in sorted(d.glob("final_examples_d*.jsonl")) for x in e.read_text().splitlines()]
        for g in sorted(d.glob("gen_*.jsonl")):
            name = g.stem[4:]
            rows = [json.loads(x) for x in g.read_text().splitlines()]
            ceil = [json.loads(x) for c in root.glob(f"ceiling_{name}_n*.jsonl") for x in c.read_text().splitlines()]
            own = [float(r["hit"]) for r in rows if r["control"] == "own"]
            sh = [float(r["hit"]) for r in rows if r["control"] == "shuffled"]
            ce = [float(r["hit"]) for r in ceil]
            ex_own = [float(e["hit"]) for e in exact if e["set"] == name and e["control"] == "own"]
            ex_sh = [float(e["hit"]) for e in exact if e["set"] == name and e["control"] == "shuffled"]
            diff = paired_diff_ci(own, sh)
            ratio = sum(own) / max(sum(ce), 1e-9)
            m = lambda v: f"{sum(v) / len(v):.2f}" if v else "—"  # noqa: E731 (runs without the exact evaluation)
            lines.append(f"| {d.name} | {name} | {len(own)} | {m(ex_own)} "
                         f"| {m(ex_sh)} | {f(bootstrap_ci(own))} | {f(bootstrap_ci(sh))} "
                         f"| {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] | {f(bootstrap_ci(ce))} | {ratio:.2f} "
                         f"| {f(bootstrap_ci(leaks(rows)))} |")
            by: dict[str, list[float]] = {}
            for r in rows:
                if r["control"] == "own":
                    by.setdefault("tool" if r["speaker"] == "tool" else r["kind"], []).append(float(r["hit"]))
            kinds.append(f"- {d.name} {name}: " + ", ".join(f"{k} {sum(v) / len(v):.2f} ({len(v)})"
                                                           for k, v in sorted(by.items())))
    text = "\n".join(lines + ["", "Free-form recall by kind (own state; tool = stated by a tool):"] + kinds) + "\n"
    (root / "report.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pool", type=int, default=600, help="training histories, featurised once and sampled from")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta-bias", type=float, default=-4.0)
    ap.add_argument("--gate-weight", type=float, default=1.0)
    ap.add_argument("--max-pos-weight", type=float, default=20.0)
    ap.add_argument("--bank", type=int, default=600, help="chit-chat exchanges the training histories draw from")
    ap.add_argument("--train-min", type=int, default=40)
    ap.add_argument("--train-max", type=int, default=250)
    ap.add_argument("--distances", default="500,2000")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--n-quick", type=int, default=32)
    ap.add_argument("--answers", choices=sorted(ANSWERS), default="bare",
                    help="training answers: the bare value, or short sentences around it")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of the context-distillation KL (0 = off)")
    ap.add_argument("--topk", type=int, default=64, help="teacher log-probs kept per reply position")
    ap.add_argument("--init", default="", help="start from an oracle-write copy head's checkpoint directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="runs/copyhist/r64")
    ap.add_argument("--report", default="")
    ap.add_argument("--no-final", action="store_true", help="train only; evaluate later with --evaluate")
    ap.add_argument("--evaluate", nargs="+", default=[], metavar="RUN_DIR",
                    help="the final evaluation of trained runs (same parent directory), distance by distance")
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.report)))
    elif args.evaluate:
        evaluate_runs(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
