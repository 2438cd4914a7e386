"""Can δ-mem's read path carry an open-set value? Oracle writes, a sweep over state size.

Only the value's tokens of a fact message are written into a fresh state ("oracle writes": nothing else touches
the state, so the distance to the question does not matter); the question is then read in a new prompt with
writes off, the fact nowhere in it. A fresh adapter (rank r, H state heads, centred inputs, s = α/r = 2 for
every rank) is trained on answer cross-entropy with values, wordings and seeds of the training split, and
evaluated on values that never occur in training (`datasets/openset.split_of`) in held-out wordings, and on
relation types never trained on.

Recall = every token of the value is the greedy (argmax) choice given the gold prefix, which is exactly "greedy
decoding starts with the value". Memory = recall with the episode's own state − recall with another episode's
state (the batch's states rolled by one), the same adapter and prompt.

    python -m lab.openset_readpath --rank 8 --heads 1 --steps 600 --out runs/readpath/r8h1     # resumable
    python -m lab.openset_readpath --report runs/readpath                                      # table + plot
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
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.state import DeltaState
from deltamem_agents.datasets.openset import Fact, sample_fact
from deltamem_agents.patching import attach, disabled, forward_with_state
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.train.calibrate import calibrate_input_centers
from deltamem_agents.runtime.replay import IGNORE, EpisodePasses


@dataclass
class Example:
    fact: Fact
    write_ids: list[int]
    write_mids: list[int]  # 0 on the value's tokens, -1 elsewhere
    read_ids: list[int]
    labels: list[int]  # the answer's value tokens and its end-of-turn token; IGNORE elsewhere
    n_value: int


def _overlap(spans: list[tuple[int, int]], a: int, b: int) -> list[int]:
    return [i for i, (s, e) in enumerate(spans) if s < b and e > a and e > s]


def build(fact: Fact, rend: ChatRenderer, answer: str = "{v}") -> Example:
    """The oracle write (the value's tokens of the fact message) and the read (system, question, the answer: the
    bare value by default, or `answer` with a {v} slot; labels on every answer token and the end-of-turn token)."""
    text, ids, spans = rend.message_block({"role": "user", "content": fact.statement})
    a = text.index(fact.statement) + fact.statement.index(fact.value)
    vt = _overlap(spans, a, a + len(fact.value))
    write_ids = rend.system_ids + ids[:vt[-1] + 1]
    mids = [-1] * len(rend.system_ids) + [0 if i in vt else -1 for i in range(vt[-1] + 1)]
    q = rend.message_ids({"role": "user", "content": fact.question})
    content = answer.format(v=fact.value)
    atext, aids, aspans = rend.message_block({"role": "assistant", "content": content})
    a2 = atext.index(content)
    at = _overlap(aspans, a2, a2 + len(content))
    at = at + [at[-1] + 1]  # the end-of-turn token after the value
    read_ids = rend.system_ids + q + aids
    off = len(rend.system_ids) + len(q)
    labels = [IGNORE] * len(read_ids)
    for i in at:
        labels[off + i] = aids[i]
    return Example(fact, write_ids, mids, read_ids, labels, len(at) - 1)


def examples(rend: ChatRenderer, n: int, split: str, seed: int, heldout_types: bool = False) -> list[Example]:
    rng = random.Random(seed)
    return [build(sample_fact(rng, split, heldout_types=heldout_types), rend) for _ in range(n)]


def _pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (T - len(r)) for r in rows])


def write_states(model, batch: list[Example]) -> DeltaState:
    ids = _pad([e.write_ids for e in batch], 0)
    mids = _pad([e.write_mids for e in batch], -1)
    mask = _pad([[1] * len(e.write_ids) for e in batch], 0)
    return forward_with_state(model, ids, None, message_ids=mids, attention_mask=mask, skip_lm_head=True,
                              detach_inputs=True, use_cache=False).state


def read_logits(model, batch: list[Example], state: DeltaState | None):
    """Logits at the positions predicting labelled tokens, and those labels (flat), with row ids; no state: the
    plain backbone."""
    ids = _pad([e.read_ids for e in batch], 0)
    mask = _pad([[1] * len(e.read_ids) for e in batch], 0)
    labels = _pad([e.labels for e in batch], IGNORE)
    if state is None:
        with disabled():
            out = forward_with_state(model, ids, None, attention_mask=mask, write=False, skip_lm_head=True,
                                     use_cache=False)
    else:
        out = forward_with_state(model, ids, state, attention_mask=mask, write=False, skip_lm_head=True,
                                 use_cache=False)
    hidden = out.outputs.last_hidden_state  # [B, T, d]
    tgt = labels[:, 1:]
    rows, pos = (tgt != IGNORE).nonzero(as_tuple=True)
    logits = model.lm_head(hidden[rows, pos]).float()
    return logits, tgt[rows, pos], rows


def roll(state: DeltaState) -> DeltaState:
    """Each row gets the next row's state: another conversation's memory."""
    return DeltaState(state.S.roll(1, dims=1), state.pend_sum.roll(1, dims=1), state.pend_count.roll(1),
                      state.pend_id.roll(1))


@torch.no_grad()
def recall(model, exs: list[Example], bs: int = 16, control: str = "own", ce_out: list | None = None) -> list[bool]:
    """Per example: is every value token (and the end token) the argmax? control: own | shuffled | none (the
    backbone, no fact anywhere)."""
    hits: list[bool] = []
    for i in range(0, len(exs), bs):
        batch = exs[i:i + bs]
        st = None if control == "none" else write_states(model, batch)
        if control == "shuffled":
            st = roll(st)
        logits, tgt, rows = read_logits(model, batch, st)
        ok = logits.argmax(-1) == tgt
        ce = F.cross_entropy(logits, tgt, reduction="none")
        for b in range(len(batch)):
            hits.append(bool(ok[rows == b].all()))
            if ce_out is not None:
                ce_out.append(float(ce[rows == b].mean()))
    return hits


def evaluate(model, sets: dict[str, list[Example]], per_example: list | None = None) -> dict:
    row: dict = {}
    for name, exs in sets.items():
        for ctl in ("own", "shuffled"):
            ces: list[float] = []
            h = recall(model, exs, control=ctl, ce_out=ces)
            row[f"{name}_{ctl}"] = sum(h) / len(h)
            row[f"{name}_{ctl}_ce"] = round(sum(ces) / len(ces), 4)
            if per_example is not None:
                per_example += [{"set": name, "control": ctl, "i": i, "kind": e.fact.kind, "relation": e.fact.relation,
                                 "value": e.fact.value, "hit": x, "ce": c} for i, (e, x, c) in enumerate(zip(exs, h, ces))]
            if name == "held" and ctl == "own":
                kinds: dict[str, list[bool]] = {}
                for e, x in zip(exs, h):
                    kinds.setdefault(e.fact.kind, []).append(x)
                row["held_by_kind"] = {k: round(sum(v) / len(v), 3) for k, v in sorted(kinds.items())}
    return row


def bytes_per_session(model, rank: int, heads: int) -> int:
    return len(model.deltamem.layer_ids) * heads * rank * rank * 4  # fp32 S per wrapped layer


def save_ckpt(out: Path, step: int, adapter, opt) -> None:
    tensors = {f"p.{k}": v.detach().contiguous() for k, v in adapter.state_dict().items()}
    for i, p in enumerate(adapter.parameters()):
        st = opt.state.get(p)
        if st:
            tensors[f"m.{i}"] = st["exp_avg"].contiguous()
            tensors[f"v.{i}"] = st["exp_avg_sq"].contiguous()
    save_file(tensors, str(out / "ckpt.tmp"))
    (out / "ckpt.tmp").replace(out / "ckpt.safetensors")
    (out / "ckpt.json").write_text(json.dumps({"step": step}))


def load_ckpt(out: Path, adapter, opt) -> int:
    if not (out / "ckpt.json").exists():
        return 0
    t = load_file(str(out / "ckpt.safetensors"))
    adapter.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("p.")})
    step = json.loads((out / "ckpt.json").read_text())["step"]
    for i, p in enumerate(adapter.parameters()):
        if f"m.{i}" in t:
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": t[f"m.{i}"], "exp_avg_sq": t[f"v.{i}"]}
    return step


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_backbone()
    cfg = DeltaMemConfig(write_granularity="token", rank=args.rank, num_state_heads=args.heads,
                         alpha=2.0 * args.rank, beta_bias_init=args.beta_bias, center_inputs=True)
    adapter = attach(model, cfg)
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    sets = {"held": examples(rend, args.n_eval, "heldout", 900_001),
            "newrel": examples(rend, args.n_eval // 2, "heldout", 900_002, heldout_types=True),
            "train": examples(rend, args.n_eval // 4, "train", 900_003)}
    calib = examples(rend, 32, "train", 7)
    calibrate_input_centers(model, [EpisodePasses([(e.write_ids, e.write_mids)], e.read_ids, [-1] * len(e.read_ids),
                                                  e.labels) for e in calib])
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    step = load_ckpt(out, adapter, opt)
    log = out / "log.jsonl"
    meta = {"rank": args.rank, "heads": args.heads, "bytes": bytes_per_session(model, args.rank, args.heads),
            "trainable": adapter.num_trainable(), "args": vars(args)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"r{args.rank}h{args.heads}", disable=args.quiet)
    while True:
        if step % args.every == 0 or step == args.steps:
            model.eval()
            final = step >= args.steps  # the full sets at the end, a prefix of each on the way
            part = sets if final else {k: v[:args.n_quick] for k, v in sets.items()}
            per: list | None = [] if final else None
            row = {"step": step, "s": round(time.time() - t0), "final": final} | evaluate(model, part, per)
            if final:
                (out / "final_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(json.dumps(row))
        if step >= args.steps:
            break
        rng = random.Random(args.seed * 1_000_003 + step)
        batch = [build(sample_fact(rng, "train"), rend) for _ in range(args.batch)]
        state = write_states(model, batch)
        logits, tgt, _ = read_logits(model, batch, state)
        loss = F.cross_entropy(logits, tgt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(out, step, adapter, opt)


def ceiling(args) -> None:
    """The backbone with the fact right before the question (no δ-mem), greedy, value contained in the reply."""
    torch.set_num_threads(args.threads)
    model, tok = load_backbone()
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    res = {}
    for name, split, seed, ht in (("held", "heldout", 900_001, False), ("newrel", "heldout", 900_002, True)):
        rng = random.Random(seed)
        facts = [sample_fact(rng, split, heldout_types=ht) for _ in range(args.n_eval if name == "held" else args.n_eval // 2)]
        hits = []
        for f in tqdm(facts, desc=f"ceiling {name}", disable=args.quiet):
            ids, _ = rend.render([{"role": "user", "content": f.statement},
                                  {"role": "assistant", "content": "Noted."},
                                  {"role": "user", "content": f.question}])
            x = torch.tensor([rend.system_ids + ids + rend.generation_prompt_ids])
            y = model.generate(x, max_new_tokens=24, do_sample=False)
            reply = tok.decode(y[0, x.shape[1]:], skip_special_tokens=True)
            hits.append(f.value.lower() in reply.lower())
        res[name] = sum(hits) / len(hits)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ceiling.json").write_text(json.dumps(res))
    print(json.dumps(res))


def report(root: Path) -> str:
    """Markdown table (recall with the own state, with another episode's state, the paired difference with a 95%
    bootstrap interval) per run under `root`, and a plot of held-out recall against bytes per session."""
    from deltamem_agents.bench.stats import bootstrap_ci, paired_diff_ci

    rows = []
    for d in sorted(p for p in root.iterdir() if (p / "final_examples.jsonl").exists()):
        meta = json.loads((d / "meta.json").read_text())
        ex = [json.loads(x) for x in (d / "final_examples.jsonl").read_text().splitlines()]
        step = json.loads((d / "ckpt.json").read_text())["step"] if (d / "ckpt.json").exists() else 0
        cell = {"run": d.name, "rank": meta["rank"], "heads": meta["heads"], "bytes": meta["bytes"], "step": step}
        for name in ("held", "newrel", "train"):
            own = [float(e["hit"]) for e in ex if e["set"] == name and e["control"] == "own"]
            sh = [float(e["hit"]) for e in ex if e["set"] == name and e["control"] == "shuffled"]
            ce_own = [e["ce"] for e in ex if e["set"] == name and e["control"] == "own" and "ce" in e]
            ce_sh = [e["ce"] for e in ex if e["set"] == name and e["control"] == "shuffled" and "ce" in e]
            if own:
                cell[name] = (bootstrap_ci(own), bootstrap_ci(sh), paired_diff_ci(own, sh), len(own),
                              paired_diff_ci(ce_sh, ce_own) if ce_own else None)
        kinds = sorted({e["kind"] for e in ex if e["set"] == "held"})
        cell["kinds"] = {k: sum(e["hit"] for e in ex if e["set"] == "held" and e["control"] == "own" and e["kind"] == k)
                         / max(1, sum(1 for e in ex if e["set"] == "held" and e["control"] == "own" and e["kind"] == k))
                         for k in kinds}
        rows.append(cell)
    if not rows:
        raise SystemExit(f"no finished runs under {root}")
    f = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"  # noqa: E731
    lines = ["| state (rank × heads) | bytes / session | steps | set | n | own state | another's state "
             "| memory (own − another) | answer CE gap, nats (another − own) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        for name, label in (("held", "held-out values, wordings"), ("newrel", "held-out relation types"),
                            ("train", "training split")):
            if name in c:
                own, sh, diff, n, gap = c[name]
                g = f"{gap[0]:+.2f} [{gap[1]:+.2f}, {gap[2]:+.2f}]" if gap else "—"
                lines.append(f"| {c['rank']} × {c['heads']} | {c['bytes']:,} | {c['step']} | {label} | {n} | {f(own)} "
                             f"| {f(sh)} | {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] | {g} |")
    if (root / "ceiling.json").exists():
        ceil = json.loads((root / "ceiling.json").read_text())
        lines += ["", "Ceiling, the same backbone with the fact turn right before the question (greedy, 24 tokens, the "
                  f"value contained in the reply): held-out values {ceil['held']:.2f}, held-out relation types "
                  f"{ceil['newrel']:.2f}."]
    kinds = sorted({k for c in rows for k in c["kinds"]})
    lines += ["", "| held-out recall by kind | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    lines += [f"| {c['rank']} × {c['heads']} | " + " | ".join(f"{c['kinds'].get(k, float('nan')):.2f}" for k in kinds)
              + " |" for c in rows]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("held", "held-out values, own state", "o-"), ("newrel", "held-out relations, own state",
                                                                             "s--")):
        pts = sorted((c["bytes"], c[key][0]) for c in rows if key in c)
        ax.errorbar([b for b, _ in pts], [m[0] for _, m in pts], yerr=[[m[0] - m[1] for _, m in pts],
                    [m[2] - m[0] for _, m in pts]], fmt=style, label=label, capsize=3)
        gaps = sorted((c["bytes"], c[key][4]) for c in rows if key in c and c[key][4])
        ax2.errorbar([b for b, _ in gaps], [g[0] for _, g in gaps], yerr=[[g[0] - g[1] for _, g in gaps],
                     [g[2] - g[0] for _, g in gaps]], fmt=style, label=label.replace(", own state", ""), capsize=3)
    pts = sorted((c["bytes"], c["held"][1]) for c in rows if "held" in c)
    ax.plot([b for b, _ in pts], [m[0] for _, m in pts], "x:", label="held-out values, another's state")
    ticks = ([c["bytes"] for c in rows], [f"{c['bytes'] // 1024} KB\n(r{c['rank']}×{c['heads']})" for c in rows])
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(*ticks)
        a.set_xlabel("δ-state bytes per session (fp32, 30 layers)")
        a.legend(fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("exact recall of an open-set value")
    ax.set_title("Oracle writes: exact recall")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_ylabel("answer CE, another's state − own (nats/token)")
    ax2.set_title("Information about the value in the state")
    fig.tight_layout()
    fig.savefig(root / "readpath_capacity.png", dpi=120)
    text = "\n".join(lines) + "\n"
    (root / "report.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta-bias", type=float, default=1.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=240)
    ap.add_argument("--n-quick", type=int, default=48, help="examples per set in the evaluations before the last")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="runs/readpath/r8h1")
    ap.add_argument("--ceiling", action="store_true", help="measure the backbone's recall with the fact in the prompt")
    ap.add_argument("--report", default="", help="write report.md and a plot for the runs under this directory")
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.report)))
    elif args.ceiling:
        ceiling(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
