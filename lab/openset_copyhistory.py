"""The copy read path with learned writes: every token of a real history offered to the state, a learned write gate.

`lab.openset_copyhead` measures the copy read path with oracle writes (only the value's tokens are written). Here
every token of every message of a history (chit-chat with other people's names, places and numbers, the fact
stated by the user or returned by a tool, more chit-chat up to a distance) is offered to the state, and the write
strength β_t = σ(w_β·h_{t-1} + b_β) decides what is kept. The head is trained on the answer's cross-entropy plus a
gate-supervision term (binary cross-entropy of β's logit: 1 on the value's tokens of the fact message, 0 elsewhere),
on short histories; it is evaluated at 500 and 2000 tokens after the fact, on held-out values, wordings and
relation types, against the same head with another episode's state.

Each message's hidden states come from the frozen backbone reading that message after the system prompt (the
message alone), as a runtime that writes message by message with a short window sees it.

    python -m lab.openset_copyhistory --rank 64 --steps 300 --out runs/copyhist/r64       # resumable
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

from .openset_copyhead import CopyHead, Feats, recall
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
def features(model, rend: ChatRenderer, hists: list[Hist], bs: int = 24) -> tuple[list[Feats], list[torch.Tensor]]:
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
    reads = [build(h.fact, rend) for h in hists]
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


def train_pool(model, rend, tok, args, path: Path) -> list[tuple[Feats, torch.Tensor]]:
    """Features and gate targets of `args.pool` training histories, computed once (the backbone's forward is most
    of a step's cost) and shared by runs with the same seed, size and distances."""
    if path.exists():
        return [(Feats(*t[:4]), t[4]) for t in torch.load(path, weights_only=True)]
    rng = random.Random(args.seed * 7_919 + 2)
    hs = [history(rng, "train", rng.randint(args.train_min, args.train_max), tok) for _ in range(args.pool)]
    pool = []
    for i in tqdm(range(0, len(hs), 32), desc="training features", disable=args.quiet):
        fs, gts = features(model, rend, hs[i:i + 32])
        pool += list(zip(fs, gts))
    torch.save([(f.key_h, f.write_tok, f.read_h, f.read_tok, g) for f, g in pool], path)
    return pool


def eval_sets(model, rend, tok, n: int, distances: tuple[int, ...], hand: bool = False) -> dict:
    sets = {}
    for dist in distances:
        for name, ht, seed in (("held", False, 910_001), ("newrel", True, 910_002)):
            rng = random.Random(seed + dist)
            hs = [history(rng, "heldout", dist, tok, heldout_types=ht) for _ in range(n if name == "held" else n // 2)]
            sets[f"{name}_d{dist}"] = (hs, features(model, rend, hs)[0])
        if hand:
            rng = random.Random(910_003 + dist)
            hs = [history(rng, "heldout", dist, tok, fact=f) for f in handwritten_facts()]
            sets[f"hand_d{dist}"] = (hs, features(model, rend, hs)[0])
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
    pool = train_pool(model, rend, tok, args, out.parent / f"hist_pool_s{args.seed}_n{args.pool}_"
                                                          f"{args.train_min}-{args.train_max}.pt")
    quick = eval_sets(model, rend, tok, args.n_quick, (distances[0],))
    log = out / "log.jsonl"
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"copyhist r{args.rank}", disable=args.quiet)
    while True:
        final = step >= args.steps
        if step % args.every == 0 and not final:
            row = {"step": step, "s": round(time.time() - t0), "beta_bias": round(head.beta.bias.item(), 3)}
            row |= evaluate(model, head, quick)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(json.dumps(row))
        if final:
            sets = eval_sets(model, rend, tok, args.n_eval, distances, hand=True)
            per: list = []
            row = {"step": step, "s": round(time.time() - t0), "final": True} | evaluate(model, head, sets, per)
            (out / "final_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(json.dumps(row))
            break
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
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(ce=f"{loss_ce.item():.3f}", gate=f"{loss_gate.item():.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(out, step, head, opt)


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
