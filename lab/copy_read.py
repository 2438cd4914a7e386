"""The copy read trained on a fixed message gate's writes, with other facts in the state and states that hold none.

`lab.copy_gate` showed that a message-aware gate writes almost only the value's tokens, and that the read trained with
oracle writes (`lab.openset_copyhead --answers sentence`) recalls held-out values behind it. Two things that read was
never shown: a state holding *another* fact besides the asked one (it must pick by key), and a state holding only
other facts (it must stay silent; with another conversation's state it pastes that conversation's value into about a
quarter of its replies). Here the read (W_k, W_q, the read gain, τ; the gate is fixed) is trained on the copy-history
training histories with the gate's writes, per example one of:

- **own**: the history's writes; CE on the answer sentence;
- **two facts**: another history's writes before or after the history's own (random order); CE as above;
- **none of it**: only another history's writes; KL(backbone ‖ backbone + read) at the answer positions, i.e. the read
  should add nothing when the state holds no answer (weight `--neg-weight`).

Writes are the gate's β on the tokens where β > 0.01 (others are exactly skipped), through the product's scan
(`core.copy.scan`, differentiable). Checkpoints are resumable and in the copy-head format, so
`python -m lab.copy_gate --final --read <run>` evaluates the read behind the gate (free-form, with the ceiling).

    python -m lab.copy_read --init runs/copyhead/r64_sentence --gate runs/copygate/norole --out runs/copyread/neg
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from deltamem_agents.core.copy import scan

from .copy_gate import MessageGate, gate_inputs
from .openset_copyhead import ANSWERS, CopyHead, Feats, MatchHead, frozen_backbone
from .openset_copyhistory import Memo, features, train_histories
from .openset_readpath import load_ckpt, save_ckpt
from .wide_facts import mixed_histories


def sparse_writes(gate: MessageGate, hists, memo: Memo, feats) -> list[tuple[torch.Tensor, ...]]:
    """Per history: (key-source hidden states, token ids, β, the tokens before them) of the tokens the gate writes
    with β > 0.01."""
    out = []
    with torch.no_grad():
        for h, f in zip(hists, feats):
            beta = torch.sigmoid(gate(gate_inputs(h, memo)))
            keep = beta > 0.01
            out.append((f.key_h[keep], f.write_tok[keep], beta[keep], f.key_prev[keep]))
    return out


def state(head: CopyHead, writes: list[list[tuple]]) -> torch.Tensor:
    """C [B, d, r] after each row's list of write groups, in order (differentiable in W_k)."""
    rows = [tuple(torch.cat([w[i] for w in g]) for i in range(4)) for g in writes]
    B, T = len(rows), max(1, max(len(r[1]) for r in rows))
    H = torch.zeros(B, T, head.d)
    V = torch.zeros(B, T, head.d)
    beta = torch.zeros(B, T)
    prev = torch.zeros(B, T, dtype=torch.long)
    for b, (kh, tok, bt, pv) in enumerate(rows):
        n = len(tok)
        H[b, :n], V[b, :n], beta[b, :n], prev[b, :n] = kh, head.E[tok], bt, pv
    return scan(torch.zeros(B, head.d, head.key_dims), head.keys(H, prev), V, beta)[0]


def read_logits(model, head: CopyHead, S: torch.Tensor, fs) -> tuple[torch.Tensor, ...]:
    """(backbone logits, with the read, targets, ‖o‖) at every labelled position of the batch."""
    h = torch.cat([f.read_h for f in fs])
    tgt = torch.cat([f.read_tok for f in fs])
    cur = torch.cat([f.read_cur for f in fs])
    rows = torch.cat([torch.full((len(f.read_tok),), b) for b, f in enumerate(fs)])
    o = torch.einsum("ndr,nr->nd", S[rows], head.queries(h, cur))
    base = model.lm_head(h.to(model.lm_head.weight.dtype)).float()
    return base, base + head.scaled_read(h, o) @ head.E.T, tgt, o.norm(dim=-1).detach()


@torch.no_grad()
def match_separation(model, head: CopyHead, writes, fs, hs, n: int = 96, seed: int = 5) -> dict:
    """How well ‖o‖ = ‖C q̂‖ tells a state holding the asked fact from one holding another history's only, at the
    positions whose target is one of the value's written tokens: medians and the AUC (P(own > other))."""
    rng = random.Random(seed)
    own, neg = [], []
    for i in rng.sample(range(len(hs)), n):
        other = rng.choice([j for j in range(len(hs)) if hs[j].fact.relation != hs[i].fact.relation])
        at = torch.isin(fs[i].read_tok, writes[i][1])
        if not at.any():
            continue
        f = Feats(fs[i].key_h, fs[i].write_tok, fs[i].read_h[at], fs[i].read_tok[at], read_cur=fs[i].read_cur[at])
        for S_w, acc in ((writes[i], own), (writes[other], neg)):
            acc.append(read_logits(model, head, state(head, [[S_w]]), [f])[3])
    own_t, neg_t = torch.cat(own), torch.cat(neg)
    auc = float((own_t[:, None] > neg_t[None, :]).float().mean())
    return {"o_own_median": round(float(own_t.median()), 4), "o_other_median": round(float(neg_t.median()), 4),
            "auc": round(auc, 4), "positions": len(own_t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default="runs/copyhead/r64_sentence", help="a copy head run to start from")
    ap.add_argument("--gate", default="runs/copygate/norole", help="a lab.copy_gate run (its gate.pt, role-free)")
    ap.add_argument("--root", default="runs/copyhist", help="where the copy-history feature memo lives")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--neg-weight", type=float, default=1.0)
    ap.add_argument("--facts", choices=("generator", "mixed"), default="generator",
                    help="training facts: the generator's, or half of them from lab.wide_facts' bank")
    ap.add_argument("--answers", choices=sorted(ANSWERS), default="sentence",
                    help="training answers (lab.openset_copyhead.ANSWERS); 'lead': the value opens every answer")
    ap.add_argument("--tok-rank", type=int, default=0,
                    help="token keys: key dimensions for the token before a written one (and at a reading position)")
    ap.add_argument("--neg-first", action="store_true",
                    help="the negatives' KL only at the reply's first position, not at every answer position")
    ap.add_argument("--gain", choices=("position", "match"), default="position",
                    help="the read gain: of the reading position only, or also of the match ‖C q̂‖ (MatchHead)")
    ap.add_argument("--p-two", type=float, default=0.4, help="share of examples with a second fact in the state")
    ap.add_argument("--p-neg", type=float, default=0.3, help="share of examples whose state holds another fact only")
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--bank", type=int, default=600)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/copyread/neg")
    args = ap.parse_args()
    out = Path(args.out)
    model, tok, rend = frozen_backbone(args.threads, out=out)
    rank = json.loads((Path(args.init) / "meta.json").read_text())["rank"]
    head = (MatchHead if args.gain == "match" else CopyHead)(model, rank, tok_rank=args.tok_rank)
    head.load_state_dict({k[2:]: v for k, v in load_file(str(Path(args.init) / "ckpt.safetensors")).items()
                          if k.startswith("p.")}, strict=False)
    head.requires_grad_(True)
    head.beta.requires_grad_(False)  # the write gate is the fixed message gate's
    gate = MessageGate(model.config.hidden_size, role=False)
    gate.load_state_dict(torch.load(Path(args.gate) / "gate.pt", weights_only=True))
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    step = load_ckpt(out, head, opt)
    meta = {"rank": rank, "tok_rank": args.tok_rank, "bytes": head.d * head.key_dims * 4, "gain": args.gain,
            "args": vars(args)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))

    hs = (mixed_histories(tok, 0, args.pool, args.bank, 40, 250) if args.facts == "mixed"
          else train_histories(tok, 0, args.pool, args.bank, 40, 250))
    pool = out / "pool.pt"  # the gate's writes and the answers' read features, computed once per run
    if pool.exists():
        writes, reads = torch.load(pool, weights_only=True)
    else:
        memo = Memo(Path(args.root) / f"memo_train_s0_b{args.bank}.pt")
        arng = random.Random(3)
        answers = [arng.choice(ANSWERS[args.answers]) for _ in hs]
        writes, reads = [], []
        for i in tqdm(range(0, len(hs), 64), desc="training features"):
            fb = features(model, rend, hs[i:i + 64], memo, answers[i:i + 64])[0]
            writes += sparse_writes(gate, hs[i:i + 64], memo, fb)
            reads += [(f.read_h, f.read_tok, f.read_cur) for f in fb]
        torch.save((writes, reads), pool)
    fs = [Feats(torch.zeros(0), torch.zeros(0, dtype=torch.long), rh, rt, read_cur=rc) for rh, rt, rc in reads]
    log = out / "log.jsonl"
    if step == 0:
        sep = match_separation(model, head, writes, fs, hs)
        tqdm.write(f"before training: {json.dumps(sep)}")
        (out / "separation_init.json").write_text(json.dumps(sep))
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="copy read")
    while step < args.steps:
        rng = random.Random(1_000_003 + step)
        pick = rng.sample(range(len(hs)), args.batch)
        groups, neg = [], []
        for i in pick:
            other = rng.choice([j for j in range(len(hs)) if hs[j].fact.relation != hs[i].fact.relation])
            u = rng.random()
            if u < args.p_neg:
                groups.append([writes[other]])
                neg.append(True)
            else:
                g = [writes[i], writes[other]] if u < args.p_neg + args.p_two else [writes[i]]
                groups.append(g if rng.random() < 0.5 else g[::-1])
                neg.append(False)
        S = state(head, groups)
        base, logits, tgt, onorm = read_logits(model, head, S, [fs[i] for i in pick])
        rows = torch.cat([torch.full((len(fs[i].read_tok),), b) for b, i in enumerate(pick)])
        is_neg = torch.tensor(neg)[rows]
        ce = F.cross_entropy(logits[~is_neg], tgt[~is_neg]) if (~is_neg).any() else torch.zeros(())
        silent = is_neg
        if args.neg_first:  # only the reply's first position (where the read decides whether to answer at all)
            silent = is_neg & torch.cat([torch.arange(len(fs[i].read_tok)) == 0 for i in pick])
        kl = (F.kl_div(logits[silent].log_softmax(-1), base[silent].log_softmax(-1), log_target=True,
                       reduction="batchmean") if silent.any() else torch.zeros(()))
        loss = ce + args.neg_weight * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(ce=f"{ce.item():.3f}", kl=f"{kl.item():.3f}")
        with log.open("a") as f:  # ‖o‖ at answer positions: states holding the answer vs not
            f.write(json.dumps({"step": step, "s": round(time.time() - t0), "ce": round(ce.item(), 4),
                                "kl": round(kl.item(), 4), "o_own": round(float(onorm[~is_neg].mean()), 4),
                                "o_neg": round(float(onorm[is_neg].mean()), 4) if is_neg.any() else None}) + "\n")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(out, step, head, opt)
    bar.close()
    sep = match_separation(model, head, writes, fs, hs)
    tqdm.write(f"after training: {json.dumps(sep)}")
    (out / "separation_final.json").write_text(json.dumps(sep))


if __name__ == "__main__":
    main()
