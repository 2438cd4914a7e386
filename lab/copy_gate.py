"""A write gate for the copy channel that sees the message, measured as a detector and behind a fixed read.

`lab.openset_copyhistory` found that the copy read path recalls held-out values with oracle writes and none with its
learnt gate: a linear function of the hidden state *before* a token cannot tell a fact about the user from the other
names and numbers of the chat, and the delta rule lets those later writes overwrite the fact's. This gate sees more:
for token t of a message, [h_{t-1}, h_t, the mean of the message's states, the message's role] → MLP → β logit
(h read with the message alone after the system prompt, as everywhere in these experiments). It is trained on the
gate targets alone (BCE; 1 on the value's tokens of the fact message), then measured

- as a detector, on held-out histories 500 and 2,000 tokens after the fact: value tokens written (β > 0.5), other
  tokens written per 1,000 tokens, total β mass on other tokens — beside the linear gate of a copy-history run;
- behind a fixed read (a copy head trained with oracle writes, `lab.openset_copyhead --answers sentence`): free-form
  recall of the value, own state vs another history's, the ceiling beside.

    python -m lab.copy_gate --out runs/copygate/mlp --read runs/copyhead/r64_sentence --linear runs/copyhist/r64_sent
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .copy_generate import generate_batch
from .openset_copyhead import frozen_backbone
from .openset_copyhistory import (Hist, Memo, _load_head, _question_prompt, eval_sets, features, gate_targets,
                                  generation_eval, history, make_bank, train_histories)
from .wide_facts import mixed_histories

ROLES = ("user", "assistant", "tool")


class MessageGate(nn.Module):
    def __init__(self, d: int, hidden: int = 256, bias: float = -4.0, role: bool = True) -> None:
        super().__init__()
        self.role = role
        self.net = nn.Sequential(nn.Linear(3 * d + (len(ROLES) if role else 0), hidden), nn.GELU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[2].bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if self.role else x[..., :-len(ROLES)]).squeeze(-1)


def gate_inputs(h: Hist, memo: Memo) -> torch.Tensor:
    """[n_tokens, 3d + 3]: per message token, its h_{t-1}, its h_t (zeros for the message's last token), the message
    mean, and the role (a gate built with `role=False` ignores the last three columns)."""
    rows = []
    for m in h.messages:
        kh = memo.d[Memo.key(m)][0]
        nxt = torch.cat([kh[1:], torch.zeros_like(kh[:1])])
        role = F.one_hot(torch.tensor(ROLES.index(m["role"])), len(ROLES)).float().expand(len(kh), -1)
        rows.append(torch.cat([kh, nxt, kh.mean(0, keepdim=True).expand_as(kh), role], dim=-1))
    return torch.cat(rows)


def detector_stats(beta: list[torch.Tensor], gts: list[torch.Tensor]) -> dict:
    val = torch.cat([b[g > 0] for b, g in zip(beta, gts)])
    other = [b[g == 0] for b, g in zip(beta, gts)]
    n_other = sum(len(o) for o in other)
    return {"value_written": round(float((val > 0.5).float().mean()), 3), "value_beta": round(float(val.mean()), 3),
            "other_written_per_1k": round(1000 * sum(int((o > 0.5).sum()) for o in other) / n_other, 2),
            "other_beta_mass_per_1k": round(1000 * sum(float(o.sum()) for o in other) / n_other, 2)}


@torch.no_grad()
def write(read, f, beta: torch.Tensor) -> torch.Tensor:
    """The read head's state after writing the history's tokens with strengths `beta` (keys and values its own)."""
    K = read.keys(f.key_h, f.key_prev)
    V = read.E[f.write_tok]
    S = torch.zeros(read.d, read.key_dims)
    for t in torch.nonzero(beta > 1e-4).squeeze(1).tolist():
        S += beta[t] * torch.outer(V[t] - S @ K[t], K[t])
    return S


def train_gate(model, rend, tok, args, root: Path, out: Path) -> MessageGate:
    """The gate trained (or loaded from `out`) on the copy-history training histories' gate targets."""
    gate = MessageGate(model.config.hidden_size, role=not args.no_role)
    ckpt = out / "gate.pt"
    if ckpt.exists():
        gate.load_state_dict(torch.load(ckpt, weights_only=True))
        return gate
    hs = (mixed_histories(tok, 0, args.pool, args.bank, 40, 250) if args.facts == "mixed"
          else train_histories(tok, 0, args.pool, args.bank, 40, 250))  # lab.openset_copyhistory's defaults
    memo = Memo(root / f"memo_train_s0_b{args.bank}.pt")
    gts = [g for i in range(0, len(hs), 64) for g in features(model, rend, hs[i:i + 64], memo)[1]]
    X = [gate_inputs(h, memo) for h in hs]
    opt = torch.optim.AdamW(gate.parameters(), lr=args.lr)
    for step in tqdm(range(args.steps), desc="gate"):
        pick = random.Random(step).sample(range(len(hs)), 16)
        x, y = torch.cat([X[i] for i in pick]), torch.cat([gts[i] for i in pick])
        loss = F.binary_cross_entropy_with_logits(gate(x), y, pos_weight=torch.tensor(args.pos_weight))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(gate.state_dict(), ckpt)
    return gate


def detector(model, rend, tok, args, gate: MessageGate, root: Path, out: Path) -> None:
    """Detector statistics and free-form recall behind the fixed read for the gate, the linear gate and oracle
    writes, on `--n-eval` held-out histories per distance (`results.json`)."""
    read, linear = _load_head(model, Path(args.read)), _load_head(model, Path(args.linear))
    eval_bank = make_bank(920_011, 600, tok)
    emem = Memo(root / "memo_eval_b600.pt")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    res = {}
    for dist in (int(x) for x in args.distances.split(",")):
        erng = random.Random(910_001 + dist)
        ehs = [history(erng, "heldout", dist, eval_bank) for _ in range(args.n_eval)]
        fs, egts = features(model, rend, ehs, emem)
        with torch.no_grad():
            b_mlp = [torch.sigmoid(gate(gate_inputs(h, emem))) for h in ehs]
            b_lin = [torch.sigmoid(linear.beta(f.key_h)).squeeze(-1) for f in fs]
        for name, betas in (("mlp", b_mlp), ("linear", b_lin), ("oracle", egts)):
            row = detector_stats(betas, egts)
            S = torch.stack([write(read, f, b) for f, b in zip(fs, betas)])
            for ctl, St in (("own", S), ("shuffled", S.roll(1, dims=0))):
                hits = 0
                for i in range(0, len(ehs), 32):
                    rep, _ = generate_batch(model, [_question_prompt(rend, h) for h in ehs[i:i + 32]], eos, head=read,
                                            S=St[i:i + 32])
                    hits += sum(h.fact.value.lower() in tok.decode(r, skip_special_tokens=True).lower()
                                for h, r in zip(ehs[i:i + 32], rep))
                row[f"free_form_{ctl}"] = round(hits / len(ehs), 3)
            res[f"d{dist}_{name}"] = row
            print(f"d{dist} {name} {json.dumps(row)}", flush=True)
        (out / "results.json").write_text(json.dumps(res, indent=1))


def final(model, rend, tok, args, gate: MessageGate, root: Path) -> None:
    """The copy-history protocol's evaluation sets (held-out values and wordings, held-out relation types, the
    hand-written probes; n = `--n-final`) at each distance: free-form replies behind the fixed read with this
    gate's writes, own state vs another history's, the ceiling beside; written as a run directory under the
    copy-history root (`gen_*.jsonl`, `final_d*.json`), so `python -m lab.openset_copyhistory --report` tables it.
    Resumable set by set."""
    read = _load_head(model, Path(args.read))
    run = root / ((args.name or Path(args.out).name) + (f"_cov{args.coverage:g}" if args.coverage else ""))
    run.mkdir(parents=True, exist_ok=True)
    for dist in (int(x) for x in args.distances.split(",")):
        if (run / f"final_d{dist}.json").exists():
            continue
        sets = eval_sets(model, rend, tok, args.n_final, (dist,), hand=True, root=root)
        memo = Memo(root / "memo_eval_b600.pt")
        cache, stats = {}, {}
        for name, (hs, fs) in sets.items():
            gts = [gate_targets(rend, h, memo) for h in hs]  # messages memoised by eval_sets
            with torch.no_grad():
                betas = gts if args.oracle else [torch.sigmoid(gate(gate_inputs(h, memo))) for h in hs]
            cache[name] = torch.stack([write(read, f, b) for f, b in zip(fs, betas)])
            stats[name] = detector_stats(betas, gts)
        row = {"distance": dist, "read": args.read, "gate": "oracle" if args.oracle else str(Path(args.out) / "gate.pt"),
               "detector": stats}
        row["coverage"] = args.coverage
        row |= generation_eval(model, tok, rend, read, sets, run, root, cache, coverage=args.coverage)
        (run / f"final_d{dist}.json").write_text(json.dumps(row, indent=1))
        tqdm.write(f"{run.name} {json.dumps(row)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/copygate/mlp")
    ap.add_argument("--read", default="runs/copyhead/r64_sentence", help="a copy head trained with oracle writes")
    ap.add_argument("--linear", default="runs/copyhist/r64_sent", help="a copy-history run whose linear gate to compare")
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--bank", type=int, default=600)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pos-weight", type=float, default=5.0)
    ap.add_argument("--no-role", action="store_true", help="the gate does not see the message's role")
    ap.add_argument("--facts", choices=("generator", "mixed"), default="generator",
                    help="training facts: the generator's, or half of them from lab.wide_facts' bank")
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--distances", default="500,2000")
    ap.add_argument("--skip-detector", action="store_true")
    ap.add_argument("--final", action="store_true", help="then the copy-history evaluation sets (n = --n-final)")
    ap.add_argument("--n-final", type=int, default=200)
    ap.add_argument("--oracle", action="store_true",
                    help="--final with oracle writes (the value's tokens, β = 1) instead of the gate's: the read alone")
    ap.add_argument("--name", default="", help="the --final run directory's name (default: --out's)")
    ap.add_argument("--coverage", type=float, default=0.0,
                    help="free-form replies: each emitted token's value direction leaves the reply-local state by "
                         "this share (lab.copy_generate); the run directory gets a _cov suffix")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    model, tok, rend = frozen_backbone(args.threads, out=out)
    root = Path(args.linear).parent
    gate = train_gate(model, rend, tok, args, root, out)
    if not args.skip_detector:
        detector(model, rend, tok, args, gate, root, out)
    if args.final:
        final(model, rend, tok, args, gate, root)


if __name__ == "__main__":
    main()
