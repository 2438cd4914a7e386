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
message alone), as a runtime that writes message by message with a short window sees it.

    python -m lab.openset_copyhistory --rank 64 --steps 300 --out runs/copyhist/r64       # resumable
    python -m lab.openset_copyhistory --rank 64 --answers sentence --distill 1 --out runs/copyhist/r64_kd
    python -m lab.openset_copyhistory --report runs/copyhist
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from deltamem_agents.backbone import load_backbone
from deltamem_agents.datasets.distractors import Ctx, faker_for
from deltamem_agents.datasets.handwritten import handwritten_facts
from deltamem_agents.datasets.openset import Fact, sample_fact
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.replay import IGNORE

from .copy_generate import generate_batch
from .openset_copyhead import ANSWERS, CopyHead, Feats, recall
from .openset_readpath import _overlap, _pad, build, load_ckpt, save_ckpt

_ACKS = ("Noted.", "Got it, thanks.", "Okay, I'll keep that in mind.", "Thanks for letting me know.")


@dataclass
class Hist:
    fact: Fact
    messages: list[dict]
    fact_index: int
    tokens_after: int


def history(rng: random.Random, split: str, distance: int, tok, heldout_types: bool = False,
            fact: Fact | None = None) -> Hist:
    fact = fact or sample_fact(rng, split, heldout_types=heldout_types)
    ctx = Ctx(rng, faker_for(rng.getrandbits(30)), [fact.value])
    msgs: list[dict] = []
    ctx.chat(msgs, rng.randint(0, 2))
    role = "tool" if fact.speaker == "tool" else "user"
    if role == "tool":
        msgs.append({"role": "user", "content": rng.choice(("Can you look that up?", "Please check.", "Look it up."))})
    fact_index = len(msgs)
    msgs += [{"role": role, "content": fact.statement}, {"role": "assistant", "content": rng.choice(_ACKS)}]
    n = ctx.fill(msgs, fact_index, distance, 0, lambda s: len(tok(s, add_special_tokens=False)["input_ids"]))
    return Hist(fact, msgs, fact_index, n)


@torch.no_grad()
def features(model, rend: ChatRenderer, hists: list[Hist], bs: int = 24, answers: list[str] | None = None
             ) -> tuple[list[Feats], list[torch.Tensor]]:
    """Per history: every message token as a write candidate (key from the previous position of its own message
    read alone after the system prompt), the read features of its question, and the gate targets (1 on the
    value's tokens in the fact message)."""
    seqs, owner, targets = [], [], []
    for hi, h in enumerate(hists):
        for mi, m in enumerate(h.messages):
            text, ids, spans = rend.message_block(m)
            tgt = [0.0] * len(ids)
            if mi == h.fact_index:
                a = text.index(h.fact.statement) + h.fact.statement.index(h.fact.value)
                for i in _overlap(spans, a, a + len(h.fact.value)):
                    tgt[i] = 1.0
            seqs.append(rend.system_ids + ids)
            owner.append(hi)
            targets.append(tgt)
    n_sys = len(rend.system_ids)
    key_h: list[list[torch.Tensor]] = [[] for _ in hists]
    toks: list[list[int]] = [[] for _ in hists]
    gts: list[list[float]] = [[] for _ in hists]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        hs = model.model(input_ids=_pad([seqs[i] for i in idx], 0),
                         attention_mask=_pad([[1] * len(seqs[i]) for i in idx], 0), use_cache=False).last_hidden_state
        for b, i in enumerate(idx):
            L = len(seqs[i])
            key_h[owner[i]].append((i, hs[b, n_sys - 1:L - 1].float().clone()))
            toks[owner[i]].append((i, seqs[i][n_sys:L]))
            gts[owner[i]].append((i, targets[i]))
    feats, gates = [], []
    reads = [build(h.fact, rend, a) for h, a in zip(hists, answers or ["{v}"] * len(hists))]
    read_f = _read_feats(model, reads)
    for hi in range(len(hists)):
        kh = torch.cat([t for _, t in sorted(key_h[hi], key=lambda x: x[0])])
        tk = torch.tensor([t for _, ts in sorted(toks[hi], key=lambda x: x[0]) for t in ts])
        gt = torch.tensor([g for _, gs in sorted(gts[hi], key=lambda x: x[0]) for g in gs])
        feats.append(Feats(kh, tk, read_f[hi][0], read_f[hi][1]))
        gates.append(gt)
    return feats, gates


@torch.no_grad()
def _read_feats(model, exs, bs: int = 16):
    out = []
    for i in range(0, len(exs), bs):
        batch = exs[i:i + bs]
        r = model.model(input_ids=_pad([e.read_ids for e in batch], 0),
                        attention_mask=_pad([[1] * len(e.read_ids) for e in batch], 0), use_cache=False).last_hidden_state
        for b, e in enumerate(batch):
            rpos = [t for t in range(len(e.labels) - 1) if e.labels[t + 1] != IGNORE]
            out.append((r[b, rpos].float().clone(), torch.tensor([e.labels[t + 1] for t in rpos])))
    return out


def _histories(tok, args) -> list[Hist]:
    rng = random.Random(args.seed * 7_919 + 2)
    return [history(rng, "train", rng.randint(args.train_min, args.train_max), tok) for _ in range(args.pool)]


def train_pool(model, rend, tok, args, root: Path) -> tuple[list[Hist], list[tuple[Feats, torch.Tensor]]]:
    """The training histories and their features and gate targets, computed once (the backbone's forward is most
    of a step's cost) and shared by runs with the same seed, size and lengths; reads with sentence answers are
    cached beside them."""
    hs = _histories(tok, args)
    path = root / f"hist_pool_s{args.seed}_n{args.pool}_{args.train_min}-{args.train_max}.pt"
    if path.exists():
        pool = [(Feats(*t[:4]), t[4]) for t in torch.load(path, weights_only=True)]
    else:
        pool = []
        for i in tqdm(range(0, len(hs), 32), desc="training features", disable=args.quiet):
            fs, gts = features(model, rend, hs[i:i + 32])
            pool += list(zip(fs, gts))
        torch.save([(f.key_h, f.write_tok, f.read_h, f.read_tok, g) for f, g in pool], path)
    assert all(len(f.write_tok) == sum(len(rend.message_ids(m)) for m in h.messages) for h, (f, _) in zip(hs, pool)), \
        "the cached pool does not match the regenerated histories"
    if args.answers != "bare":
        rpath = path.with_name(path.stem + f"_{args.answers}.pt")
        if rpath.exists():
            reads = torch.load(rpath, weights_only=True)
        else:
            rng = random.Random(args.seed * 7_919 + 3)
            exs = [build(h.fact, rend, rng.choice(ANSWERS[args.answers])) for h in hs]
            reads = _read_feats(model, exs)
            torch.save(reads, rpath)
        pool = [(Feats(f.key_h, f.write_tok, r[0], r[1]), g) for (f, g), r in zip(pool, reads)]
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
    g = F.softplus(head.gate(h)) * head.log_tau.exp()
    logits = model.lm_head(h.to(model.lm_head.weight.dtype)).float() + g * (o @ head.E.T)
    lp_s = logits.log_softmax(-1).gather(-1, idx)
    return (lp_t.exp() * (lp_t - lp_s)).sum(-1).mean()


def eval_sets(model, rend, tok, n: int, distances: tuple[int, ...], hand: bool = False,
              cache: Path | None = None) -> dict:
    """Evaluation histories and their features (bare-answer reads), cached under `cache` when given."""
    sets = {}
    for dist in distances:
        specs = [("held", n, 910_001, False), ("newrel", n // 2, 910_002, True)] + ([("hand", 0, 910_003, False)]
                                                                                   if hand else [])
        for name, m, seed, ht in specs:
            rng = random.Random(seed + dist)
            if name == "hand":
                hs = [history(rng, "heldout", dist, tok, fact=f) for f in handwritten_facts()]
            else:
                hs = [history(rng, "heldout", dist, tok, heldout_types=ht) for _ in range(m)]
            path = cache / f"eval_{name}_d{dist}_n{len(hs)}.pt" if cache else None
            if path is not None and path.exists():
                fs = [Feats(*t) for t in torch.load(path, weights_only=True)]
            else:
                fs = []
                for i in tqdm(range(0, len(hs), 16), desc=f"features {name} d{dist}", leave=False):
                    fs += features(model, rend, hs[i:i + 16])[0]
                if path is not None:
                    torch.save([(f.key_h, f.write_tok, f.read_h, f.read_tok) for f in fs], path)
            sets[f"{name}_d{dist}"] = (hs, fs)
    return sets


def evaluate(model, head, sets, per: list | None = None) -> dict:
    row: dict = {}
    for name, (hs, fs) in sets.items():
        for ctl in ("own", "shuffled"):
            hits, ces = recall(model, head, fs, ctl, bs=8)
            row[f"{name}_{ctl}"] = round(sum(hits) / len(hits), 4)
            row[f"{name}_{ctl}_ce"] = round(sum(ces) / len(ces), 4)
            if per is not None:
                per += [{"set": name, "control": ctl, "i": i, "kind": h.fact.kind, "relation": h.fact.relation,
                         "speaker": h.fact.speaker, "value": h.fact.value, "tokens_after": h.tokens_after, "hit": x,
                         "ce": c} for i, (h, x, c) in enumerate(zip(hs, hits, ces))]
    return row


def generation_eval(model, tok, rend, head, sets, out: Path, root: Path, bs: int = 16) -> dict:
    """Free-form greedy replies to the question alone (the fact nowhere in the prompt), with the history's state and
    with another history's, and the ceiling: the backbone with the fact turn right before the question (cached in
    `root`, it does not depend on the head). One file per set, so a killed evaluation resumes."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    res = {}
    for name, (hs, fs) in sets.items():
        path = out / f"gen_{name}.jsonl"
        if not path.exists():
            rows = []
            for ctl in ("own", "shuffled"):
                for i in tqdm(range(0, len(hs), bs), desc=f"replies {name} {ctl}", leave=False):
                    S = head.write(fs[i:i + bs]) if ctl == "own" else \
                        head.write([fs[(j - 1) % len(fs)] for j in range(i, min(i + bs, len(fs)))])
                    replies, _ = generate_batch(model, [_question_prompt(rend, h) for h in hs[i:i + bs]], eos,
                                                head=head, S=S)
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
    return res


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
    teacher = teacher_pool(model, rend, tok, hs, out.parent / f"teacher_s{args.seed}_n{args.pool}_k{args.topk}.pt",
                           args.topk) if args.distill else [None] * len(hs)
    if args.distill:
        tqdm.write(f"teacher replies containing the value: {sum(t is not None for t in teacher)}/{len(teacher)}")
    quick = eval_sets(model, rend, tok, args.n_quick, (distances[0],))
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
    final = out / "final.json"
    if not final.exists():
        sets = eval_sets(model, rend, tok, args.n_eval, distances, hand=True, cache=out.parent)
        per: list = []
        row = {"step": step, "final": True} | evaluate(model, head, sets, per)
        (out / "final_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
        row |= generation_eval(model, tok, rend, head, sets, out, out.parent)
        final.write_text(json.dumps(row, indent=1))
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(json.dumps(row))


def report(root: Path) -> str:
    from deltamem_agents.bench.stats import bootstrap_ci, paired_diff_ci

    f = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"  # noqa: E731
    lines = ["| run | r | bytes | set | n | own state | another's state | memory (own − another) |",
             "|---|---|---|---|---|---|---|---|"]
    for d in sorted(p for p in root.iterdir() if (p / "final_examples.jsonl").exists()):
        meta = json.loads((d / "meta.json").read_text())
        ex = [json.loads(x) for x in (d / "final_examples.jsonl").read_text().splitlines()]
        for name in sorted({e["set"] for e in ex}):
            own = [float(e["hit"]) for e in ex if e["set"] == name and e["control"] == "own"]
            sh = [float(e["hit"]) for e in ex if e["set"] == name and e["control"] == "shuffled"]
            diff = paired_diff_ci(own, sh)
            lines.append(f"| {d.name} | {meta['rank']} | {meta['bytes']:,} | {name} | {len(own)} "
                         f"| {f(bootstrap_ci(own))} | {f(bootstrap_ci(sh))} "
                         f"| {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] |")
            by: dict[str, list[float]] = {}
            for e in ex:
                if e["set"] == name and e["control"] == "own":
                    by.setdefault("tool" if e["speaker"] == "tool" else e["kind"], []).append(float(e["hit"]))
            lines.append("| | | | by kind | | " + ", ".join(f"{k} {sum(v) / len(v):.2f} ({len(v)})"
                                                              for k, v in sorted(by.items())) + " | | |")
    text = "\n".join(lines) + "\n"
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
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.report)))
    else:
        train(args)


if __name__ == "__main__":
    main()
