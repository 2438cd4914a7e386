"""A read path that can copy a token: a delta-rule memory whose values are token embeddings, read into the logits.

The attention-side read path (q/o corrections from an r×r state) carries information about an open-set value but
does not decode it (`lab.openset_readpath`). This experiment measures the alternative named in the open-set plan:
a *value channel built from the token embedding* with *keys that carry the previous position*, as induction heads
do. One state per session, S ∈ R^{d×r} (d = the backbone's width, r = number of key dimensions):

    write token x_t:   k = norm(W_k h_{t-1}),  β = σ(w_β·h_{t-1} + b_β),  v = ê(x_t)
                       S ← S + β (v − S k) kᵀ                      (the gated delta rule, fp32)
    read at p:         q = norm(W_q h_p),  o = S q,  g = softplus(w_g·h_p + b_g)
                       logits_p = lm_head(h_p) + τ g · Ê o

h is the frozen backbone's final (normed) hidden state: h_{t-1} is exactly the state that predicts x_t, so a key
written there is matched by a later position that "wants the same kind of token in the same context"; the value
is the unit-normalised embedding row ê of the written token, so reading it back raises that token's logit through
Ê (all unit-normalised embedding rows). The backbone is never changed and runs without gradients; only W_k, W_q,
w_β, w_g and τ are trained (2·r·d + 2·d + 3 parameters). Same protocol as `lab.openset_readpath`: oracle writes
(only the value's tokens), held-out values, wordings and relation types, recall = greedy decoding starts with the
value (every value token and the end-of-turn token are the argmax given the gold prefix), and the control: the same
head with another episode's state.

    python -m lab.openset_copyhead --rank 8 --steps 400 --out runs/copyhead/r8        # resumable
    python -m lab.openset_copyhead --report runs/copyhead
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
from deltamem_agents.core.copy import CopyChannel
from deltamem_agents.datasets.openset import sample_fact
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.replay import IGNORE

from .openset_readpath import Example, _pad, build, examples, load_ckpt, save_ckpt


@dataclass
class Feats:
    """What the head needs from one example, computed once by the frozen backbone."""
    key_h: torch.Tensor     # [n_w, d] hidden states at the positions before the written tokens
    write_tok: torch.Tensor  # [n_w] the written token ids
    read_h: torch.Tensor    # [n_r, d] hidden states at the positions predicting labelled tokens
    read_tok: torch.Tensor  # [n_r] the labelled tokens
    key_prev: torch.Tensor | None = None  # [n_w] the token before each written one (token keys)
    read_cur: torch.Tensor | None = None  # [n_r] the token at each reading position (token queries)


def frozen_backbone(threads: int, seed: int = 0, out: Path | None = None) -> tuple:
    """The copy experiments' set-up: threads and seed, the run directory made, the default backbone frozen and a
    renderer with the default system prompt: (model, tokenizer, renderer)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    model, tok = load_backbone()
    model.requires_grad_(False)
    return model, tok, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)


@torch.no_grad()
def features(model, exs: list[Example], bs: int = 16) -> list[Feats]:
    out: list[Feats] = []
    body = model.model
    for i in range(0, len(exs), bs):
        batch = exs[i:i + bs]
        w = body(input_ids=_pad([e.write_ids for e in batch], 0),
                 attention_mask=_pad([[1] * len(e.write_ids) for e in batch], 0), use_cache=False).last_hidden_state
        r = body(input_ids=_pad([e.read_ids for e in batch], 0),
                 attention_mask=_pad([[1] * len(e.read_ids) for e in batch], 0), use_cache=False).last_hidden_state
        for b, e in enumerate(batch):
            wpos = [t for t, m in enumerate(e.write_mids) if m >= 0]
            rpos = [t for t in range(len(e.labels) - 1) if e.labels[t + 1] != IGNORE]
            out.append(Feats(w[b, [t - 1 for t in wpos]].float().clone(), torch.tensor([e.write_ids[t] for t in wpos]),
                             r[b, rpos].float().clone(), torch.tensor([e.labels[t + 1] for t in rpos])))
    return out


ANSWERS = {"bare": ("{v}",),
           "sentence": ("{v}.", "It's {v}.", "That is {v}.", "You told me: {v}.", "{v}, as you mentioned.",
                        "I believe it is {v}.", "You said {v}."),
           "lead": ("{v}.", "{v}, as you mentioned.", "{v}, you told me.", "{v}. That's what you said.",
                    "{v}, I believe.")}


def train_pool(model, rend, n: int, seed: int, path: Path, answers: str = "bare") -> list[Feats]:
    """Features of `n` training examples (values, wordings and relations of the training split), computed once
    and kept beside the checkpoint: the frozen backbone's forward is most of a step's cost."""
    if path.exists():
        return [Feats(*t) for t in torch.load(path, weights_only=True)]
    rng = random.Random(seed * 7_919 + 1)
    exs = [build(sample_fact(rng, "train"), rend, rng.choice(ANSWERS[answers])) for _ in range(n)]
    feats = []
    for i in tqdm(range(0, n, 64), desc="training features"):
        feats += features(model, exs[i:i + 64])
    torch.save([(f.key_h, f.write_tok, f.read_h, f.read_tok) for f in feats], path)
    return feats


class CopyHead(CopyChannel):
    """The product's copy-channel parameters (`core.copy.CopyChannel`, same initialisation) with the lab's batched
    write and read over precomputed features."""

    def __init__(self, model, rank: int, beta_bias: float = 1.0, gate_bias: float = 0.0, tau: float = 10.0,
                 tok_rank: int = 0):
        emb = model.get_input_embeddings().weight.detach().float()
        super().__init__(emb.shape[1], rank, beta_bias=beta_bias, gate_bias=gate_bias, tau=tau, tok_rank=tok_rank)
        self.register_buffer("E", F.normalize(emb, dim=-1), persistent=False)
        self.d = emb.shape[1]

    def keys(self, h: torch.Tensor, prev_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unit write keys [..., key_dims]: the product's `CopyChannel.key` (with token keys
        [cos α · norm(W_k h_{t-1}), sin α · norm(W_t ê(x_{t-1}))], x_{t-1} the token before the written one)."""
        return self.key(h, prev_ids, self.E)

    def queries(self, h: torch.Tensor, cur_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unit queries [..., key_dims] at reading positions: `CopyChannel.query`, with the token at the position
        (the one that precedes the token being predicted; W_t is shared, so the same token matches exactly)."""
        return self.query(h, cur_ids, self.E)

    def scaled_read(self, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """u = g·o [..., d] for reading positions h [..., d] and read-outs o = C q̂ [..., d]; Ê u is added to the
        logits."""
        return self.gain(h) * o

    def write(self, feats: list[Feats]) -> torch.Tensor:
        """The states after writing each example's tokens in order: [B, d, r] (fp32)."""
        B, n = len(feats), max(len(f.write_tok) for f in feats)
        S = torch.zeros(B, self.d, self.rank)
        H = torch.zeros(B, n, self.d)
        V = torch.zeros(B, n, self.d)
        M = torch.zeros(B, n, 1, 1)
        for b, f in enumerate(feats):
            H[b, :len(f.write_tok)] = f.key_h
            V[b, :len(f.write_tok)] = self.E[f.write_tok]
            M[b, :len(f.write_tok)] = 1.0
        K = F.normalize(self.wk(H), dim=-1)
        beta = torch.sigmoid(self.beta(H)).unsqueeze(-1)  # [B, n, 1, 1]
        if not torch.is_grad_enabled():  # evaluation: the same update in place
            W = (M * beta).view(B, n, 1) * K
            for t in range(n):
                err = V[:, t] - torch.bmm(S, K[:, t, :, None]).squeeze(2)
                S.baddbmm_(err[:, :, None], W[:, t, None, :])
            return S
        for t in range(n):
            k = K[:, t]
            err = V[:, t] - torch.einsum("bdr,br->bd", S, k)
            S = S + M[:, t] * beta[:, t] * torch.einsum("bd,br->bdr", err, k)
        return S

    def logits(self, model, S: torch.Tensor, feats: list[Feats]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [N, V] at every labelled position of the batch, their targets [N], row ids [N])."""
        h = torch.cat([f.read_h for f in feats])
        tgt = torch.cat([f.read_tok for f in feats])
        rows = torch.cat([torch.full((len(f.read_tok),), b) for b, f in enumerate(feats)])
        q = F.normalize(self.wq(h), dim=-1)
        o = torch.einsum("ndr,nr->nd", S[rows], q)
        base = model.lm_head(h.to(model.lm_head.weight.dtype)).float()
        return base + self.scaled_read(h, o) @ self.E.T, tgt, rows


class MatchHead(CopyHead):
    """A CopyHead whose read gain also depends on how well the query matched the written keys:
    u = g(h) · σ(a·‖o‖ + c) · o. With unit keys and values, ‖o‖ = ‖C q̂‖ is about the cosine between the query
    and the keys written (weighted by β), so a state that holds no key like the query can be read as silence
    without lowering the gain where one matches. a, c are trained with the rest (`match`, two scalars)."""

    def __init__(self, model, rank: int, match: tuple[float, float] = (8.0, -2.0), **kw) -> None:
        super().__init__(model, rank, **kw)
        self.match = torch.nn.Parameter(torch.tensor(match))

    def match_gate(self, o: torch.Tensor) -> torch.Tensor:
        """σ(a·‖o‖ + c) [..., 1]."""
        return torch.sigmoid(self.match[0] * o.norm(dim=-1, keepdim=True) + self.match[1])

    def scaled_read(self, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return self.gain(h) * self.match_gate(o) * o


def head_for(model, meta: dict) -> CopyHead:
    """The lab head a run's meta.json describes (`gain`: "position", the default, or "match"; `tok_rank`)."""
    return (MatchHead if meta.get("gain") == "match" else CopyHead)(model, meta["rank"], tok_rank=meta.get("tok_rank", 0))


def recall(model, head: CopyHead, feats: list[Feats], control: str, bs: int = 32,
           value_hits: list | None = None) -> tuple[list[bool], list[float]]:
    hits, ces = [], []
    with torch.no_grad():
        for i in range(0, len(feats), bs):
            fb = feats[i:i + bs]
            S = head.write(fb)
            if control == "shuffled":
                S = S.roll(1, dims=0)
            elif control == "none":
                S = torch.zeros_like(S)
            logits, tgt, rows = head.logits(model, S, fb)
            ok = logits.argmax(-1) == tgt
            ce = F.cross_entropy(logits, tgt, reduction="none")
            for b in range(len(fb)):
                hits.append(bool(ok[rows == b].all()))
                if value_hits is not None:
                    value_hits.append(bool(ok[rows == b][:-1].all()))  # the value's tokens, not the end token
                ces.append(float(ce[rows == b].mean()))
    return hits, ces


@torch.no_grad()
def generate(model, head: CopyHead, S: torch.Tensor, prompt: list[int], eos: int, max_new: int = 24) -> list[int]:
    """Greedy decoding with the copy read path on every step (state S: [d, r]), the backbone's KV cache."""
    out = model.model(input_ids=torch.tensor([prompt]), use_cache=True)
    past, h = out.past_key_values, out.last_hidden_state[0, -1:].float()
    ids: list[int] = []
    for _ in range(max_new):
        q = F.normalize(head.wq(h), dim=-1)
        logits = model.lm_head(h) + head.scaled_read(h, (S @ q[0])[None]) @ head.E.T
        nxt = int(logits.argmax(-1))
        if nxt == eos:
            break
        ids.append(nxt)
        out = model.model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, h = out.past_key_values, out.last_hidden_state[0, -1:].float()
    return ids


def generation_recall(model, tok, rend, head, exs: list[Example], feats: list[Feats], control: str) -> list[dict]:
    """Free-form greedy replies to the question (the fact nowhere in the prompt), the value contained or not."""
    rows = []
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i in tqdm(range(0, len(exs), 32), desc=f"generate {control}", leave=False):
        S = head.write(feats[i:i + 32])
        if control == "shuffled":
            S = S.roll(1, dims=0)
        for b, e in enumerate(exs[i:i + 32]):
            prompt = rend.system_ids + rend.message_ids({"role": "user", "content": e.fact.question}) \
                + rend.generation_prompt_ids
            reply = tok.decode(generate(model, head, S[b], prompt, eos), skip_special_tokens=True)
            rows.append({"kind": e.fact.kind, "value": e.fact.value, "reply": reply, "control": control,
                         "hit": e.fact.value.lower() in reply.lower()})
    return rows


def generation_eval(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model, tok = load_backbone()
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    meta = json.loads((out / "meta.json").read_text())
    head = CopyHead(model, meta["rank"])
    t = load_file(str(out / "ckpt.safetensors"))
    head.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("p.")}, strict=False)
    res, lines = {}, []
    for name, seed, n, ht in (("held", 900_001, args.n_eval, False), ("newrel", 900_002, args.n_eval // 2, True)):
        exs = examples(rend, n, "heldout", seed, heldout_types=ht)
        fs = features(model, exs)
        for ctl in ("own", "shuffled"):
            rows = generation_recall(model, tok, rend, head, exs, fs, ctl)
            lines += [json.dumps({"set": name} | r) for r in rows]
            res[f"{name}_{ctl}"] = sum(r["hit"] for r in rows) / len(rows)
            print(name, ctl, res[f"{name}_{ctl}"], flush=True)
    (out / "generation_examples.jsonl").write_text("\n".join(lines) + "\n")
    (out / "generation.json").write_text(json.dumps(res))


def evaluate(model, head, sets: dict[str, tuple[list[Example], list[Feats]]], per: list | None = None) -> dict:
    row: dict = {}
    for name, (exs, fs) in sets.items():
        for ctl in ("own", "shuffled", "none"):
            vh: list[bool] = []
            h, c = recall(model, head, fs, ctl, value_hits=vh)
            row[f"{name}_{ctl}"] = round(sum(h) / len(h), 4)
            row[f"{name}_{ctl}_value"] = round(sum(vh) / len(vh), 4)
            row[f"{name}_{ctl}_ce"] = round(sum(c) / len(c), 4)
            if per is not None:
                per += [{"set": name, "control": ctl, "i": i, "kind": e.fact.kind, "relation": e.fact.relation,
                         "value": e.fact.value, "hit": x, "value_hit": v, "ce": y}
                        for i, (e, x, v, y) in enumerate(zip(exs, h, vh, c))]
            if ctl == "own":
                kinds: dict[str, list[bool]] = {}
                for e, x in zip(exs, h):
                    kinds.setdefault(e.fact.kind, []).append(x)
                row[f"{name}_by_kind"] = {k: round(sum(v) / len(v), 2) for k, v in sorted(kinds.items())}
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
    step = load_ckpt(out, head, opt)
    sets = {}
    for name, split, seed, n, ht in (("held", "heldout", 900_001, args.n_eval, False),
                                     ("newrel", "heldout", 900_002, args.n_eval // 2, True),
                                     ("train", "train", 900_003, args.n_eval // 4, False)):
        exs = examples(rend, n, split, seed, heldout_types=ht)
        sets[name] = (exs, features(model, exs))
    suffix = "" if args.answers == "bare" else f"_{args.answers}"
    pool = train_pool(model, rend, args.pool, args.seed, out.parent / f"train_pool_s{args.seed}_n{args.pool}{suffix}.pt",
                      args.answers)
    d = head.d
    meta = {"rank": args.rank, "bytes": d * args.rank * 4, "trainable": sum(p.numel() for p in head.parameters()),
            "args": vars(args)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log = out / "log.jsonl"
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"copy r{args.rank}", disable=args.quiet)
    while True:
        if step % args.every == 0 or step >= args.steps:
            final = step >= args.steps
            part = sets if final else {k: (v[0][:args.n_quick], v[1][:args.n_quick]) for k, v in sets.items()}
            per: list | None = [] if final else None
            row = {"step": step, "s": round(time.time() - t0), "final": final,
                   "tau": round(head.log_tau.exp().item(), 3)} | evaluate(model, head, part, per)
            if final:
                (out / "final_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            tqdm.write(json.dumps(row))
        if step >= args.steps:
            break
        rng = random.Random(args.seed * 1_000_003 + step)
        fb = [pool[i] for i in rng.sample(range(len(pool)), args.batch)]
        S = head.write(fb)
        logits, tgt, _ = head.logits(model, S, fb)
        loss = F.cross_entropy(logits, tgt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(out, step, head, opt)


def report(root: Path) -> str:
    from deltamem_agents.bench.stats import bootstrap_ci, paired_diff_ci

    lines = ["| key dims r | bytes / session | steps | set | n | own state | another's state | no state "
             "| memory (own − another) |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"  # noqa: E731
    kind_rows = []
    for d in sorted(p for p in root.iterdir() if (p / "final_examples.jsonl").exists()):
        meta = json.loads((d / "meta.json").read_text())
        ex = [json.loads(x) for x in (d / "final_examples.jsonl").read_text().splitlines()]
        step = json.loads((d / "ckpt.json").read_text())["step"]
        for name, label in (("held", "held-out values, wordings"), ("newrel", "held-out relation types"),
                            ("train", "training split")):
            col = {c: [float(e["hit"]) for e in ex if e["set"] == name and e["control"] == c]
                   for c in ("own", "shuffled", "none")}
            if not col["own"]:
                continue
            diff = paired_diff_ci(col["own"], col["shuffled"])
            lines.append(f"| {meta['rank']} | {meta['bytes']:,} | {step} | {label} | {len(col['own'])} "
                         f"| {f(bootstrap_ci(col['own']))} | {f(bootstrap_ci(col['shuffled']))} "
                         f"| {f(bootstrap_ci(col['none']))} | {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] |")
        by: dict[str, list[float]] = {}
        for e in ex:
            if e["set"] == "held" and e["control"] == "own":
                by.setdefault(e["kind"], []).append(float(e["hit"]))
        kind_rows.append((meta["rank"], {k: sum(v) / len(v) for k, v in by.items()}))
    kinds = sorted({k for _, r in kind_rows for k in r})
    lines += ["", "| held-out recall by kind (own state) | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    lines += [f"| r = {r} | " + " | ".join(f"{row.get(k, float('nan')):.2f}" for k in kinds) + " |"
              for r, row in kind_rows]
    text = "\n".join(lines) + "\n"
    (root / "report.md").write_text(text)
    return text


def plot(readpath: Path, copy_runs: Path, sentence: Path, ceiling: Path, out: Path) -> None:
    """Held-out open-set recall against bytes per session: the q/o read path (§15), the copy read path (exact,
    bare answers), the copy read path in free-form replies, and the backbone with the fact in its prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rate(path: Path, name: str, key: str = "hit") -> tuple[int, float]:
        ex = [json.loads(x) for x in (path / "final_examples.jsonl").read_text().splitlines()]
        own = [e[key] for e in ex if e["set"] == name and e["control"] == "own"]
        return json.loads((path / "meta.json").read_text())["bytes"], sum(own) / len(own)

    fig, ax = plt.subplots(figsize=(7, 4))
    for root, label, style in ((readpath, "q/o read path, exact (oracle writes)", "o-"),
                               (copy_runs, "copy read path, exact (oracle writes)", "s-")):
        pts = sorted(rate(d, "held") for d in root.iterdir() if (d / "final_examples.jsonl").exists())
        ax.plot([b for b, _ in pts], [r for _, r in pts], style, label=label)
    gen = [json.loads(x) for x in (sentence / "generation_examples.jsonl").read_text().splitlines() if x]
    own = [e["hit"] for e in gen if e["set"] == "held" and e["control"] == "own"]
    sh = [e["hit"] for e in gen if e["set"] == "held" and e["control"] == "shuffled"]
    b = json.loads((sentence / "meta.json").read_text())["bytes"]
    ax.plot([b], [sum(own) / len(own)], "D", ms=9, label="copy read path, free-form replies, own state")
    ax.plot([b], [sum(sh) / len(sh)], "x", ms=9, label="… another conversation's state")
    ax.axhline(json.loads(ceiling.read_text())["held"], ls="--", color="grey",
               label="backbone with the fact in its prompt")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("state bytes per session (fp32)")
    ax.set_ylabel("held-out open-set values recalled")
    ax.set_ylim(-0.02, 1.0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=8, help="key dimensions r (the state is d × r)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pool", type=int, default=1200, help="training examples, featurised once and sampled from")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta-bias", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=240)
    ap.add_argument("--n-quick", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="runs/copyhead/r8")
    ap.add_argument("--report", default="")
    ap.add_argument("--plot", nargs=5, metavar=("READPATH_RUNS", "COPY_RUNS", "SENTENCE_RUN", "CEILING_JSON", "PNG"),
                    help="the summary plot of the read paths against bytes per session")
    ap.add_argument("--answers", choices=sorted(ANSWERS), default="bare",
                    help="training answers: the bare value, or short sentences around it")
    ap.add_argument("--generate", action="store_true", help="greedy free-form replies from --out's checkpoint")
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.report)))
    elif args.plot:
        plot(*(Path(p) for p in args.plot))
    elif args.generate:
        generation_eval(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
