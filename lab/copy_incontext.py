"""The copy channel's message gate and read trained on the runtime's own features, not on message-alone ones.

The lab's copy heads (`lab.copy_gate`, `lab.copy_read`) learn from each message read alone after the system prompt.
The product writes a history in window passes (`runtime.replay.build_passes`: the system prompt, re-read messages,
new messages), so a message's hidden states depend on the messages before it in its window; through the product
the mixed-facts message gate then writes ~10–20 tokens of chit-chat (other people's numbers, names) per 1,300 beside
the value, and the read pastes them ("1444.", "Bread Pitt"). Here both are trained on exactly what the product
computes: each training history (`lab.wide_facts.mixed_histories`: generated and wide-bank facts, training values
and wordings only) becomes the runtime's passes under a window budget drawn from `--budgets`, the hidden states come
from `forward_with_state` with the adapter's δ layers carrying their state across passes (as in a session), and the
copy channel's writes and reads are the product's functions (`core.copy`), differentiable in its parameters:

- keys from the position before each token (`shifted_keys` / `shifted_ids`), β from the message gate
  (`CopyChannel.write_gates`, positions grouped by message id within a pass), values ê(x);
- written: the tokens the runtime writes (message id ≥ 0), except the answer's (generated tokens are not written);
- loss: CE on the answer's tokens (logits = lm_head(h) + g·Ê o, reads after the write of the same position) plus
  `--gate-weight` × the gate's BCE (1 on the value's tokens of the fact message, 0 on every other written token);
  with `--p-neg`, that share of examples instead holds another history's state (all its passes, then this
  history's read pass) and pays `--neg-weight` × KL(backbone ‖ backbone + read) at the answer positions;
  with `--p-distract`, that share of the other examples holds a second history's fact too (its write passes before
  or after this history's, a fact of the same kind when the pool has one): the read must pick the asked fact;
  with `--closed N`, N histories of the shipped adapter's closed kinds (favourite colour, food, sport, drink; the
  product generator's training split) join the pool, answered as the closed-set probe expects ("Coral."), so that
  the read learns to complete (or leave alone) the values the δ layers already recall.

The starting point is an adapter with a copy channel (`--init`, e.g. one made by `lab import-copy-head`); the
result is the same adapter with the trained channel (`<out>/adapter`). Features are computed once (`<out>/pool.pt`)
and training checkpoints every `--ckpt-every` steps (resumable).

    python -m lab.copy_incontext --init runs/adapters/v17+tok32 --out runs/copyctx/v17_tok32
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from deltamem_agents.core import copy as cp
from deltamem_agents.datasets.episode import Episode
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.replay import IGNORE, build_passes
from deltamem_agents.runtime.window import WindowPolicy

from .openset_copyhead import ANSWERS
from .openset_readpath import _overlap
from .wide_facts import mixed_histories


def value_positions(rend: ChatRenderer, msg: dict, value: str) -> list[int]:
    """Token offsets of `value` inside the rendered block of `msg`."""
    text, _ids, spans = rend.message_block(msg)
    a = text.index(msg["content"]) + msg["content"].index(value)
    return _overlap(spans, a, a + len(value))


def training_items(tok, args) -> list[tuple]:
    """(messages, fact index, value, question, answer, kind) of each training history: `lab.wide_facts`' mixed
    open-set histories (answer None: drawn from `--answers` when the pool is built)."""
    hs = mixed_histories(tok, args.seed, args.pool, args.bank, args.lo, args.hi)
    return [(tuple(h.messages), h.fact_index, h.fact.value, h.fact.question, None, h.fact.kind) for h in hs]


def closed_items(args) -> list[tuple]:
    """`--closed` histories of the product generator's closed kinds (favourite colour, food, sport, drink: the
    shipped adapter's δ layers recall them), training split and templates, answered as the probe's gold ("Coral.")."""
    from deltamem_agents.datasets.synthetic import first_of_kinds

    rng = random.Random(args.seed * 7_919 + 29)
    kinds = ("colour", "food", "sport", "drink")
    out = []
    for _ in range(args.closed):
        ep = first_of_kinds(rng.getrandbits(31), "train", kinds, mix={"fact": 1.0}, distance_range=(args.lo, args.hi))
        out.append((ep.messages, ep.fact_index, ep.meta["value"], ep.question, ep.answer, "closed"))
    return out


@torch.no_grad()
def pool(model, tok, rend: ChatRenderer, args, items: list[tuple], seed: int) -> list[dict]:
    """Per training history: its passes' hidden states (bf16), ids, message ids, what the runtime writes, the gate
    targets and the answer's labels (read pass)."""
    from deltamem_agents.patching import forward_with_state

    rng = random.Random(seed)
    adapter = model.deltamem
    out = []
    for messages, fact_index, value, question, answer, kind in tqdm(items, desc="in-context features"):
        answer = answer if answer is not None else rng.choice(ANSWERS[args.answers]).format(v=value)
        ep = Episode(messages=messages, question=question, answer=answer, aliases=(), fact_index=fact_index, kind=kind)
        p = build_passes(ep, rend, WindowPolicy(budget=rng.choice(args.budgets), reserve=48))
        vpos = value_positions(rend, messages[fact_index], value)
        answer_mid = len(messages) + 1
        st = adapter.zero_state(1)
        passes = []
        for ids, mids in p.write_passes + [(p.read_ids, p.read_mids)]:
            x = torch.tensor([ids])
            o = forward_with_state(model, x, st, message_ids=torch.tensor([mids]), logits_to_keep=1)
            st = o.state
            m = torch.tensor(mids)
            written = (m >= 0) & (m != answer_mid)
            target = torch.zeros(len(ids))
            where = (m == fact_index).nonzero().flatten().tolist()
            if where:  # the fact message is new in this pass: its value's tokens are the gate's positives
                start = where[0]
                for j in vpos:
                    target[start + j] = 1.0
            passes.append({"h": o.copy.h[0].to(torch.bfloat16), "ids": x[0], "mids": m, "written": written,
                           "target": target})
        labels = torch.tensor(p.labels)
        passes[-1]["labels"] = labels
        out.append({"passes": passes, "fact_in_window": bool(p.fact_in_window), "kind": kind,
                    "n_target": int(sum(float(q["target"].sum()) for q in passes))})
    return out


def run_passes(channel: cp.CopyChannel, E: torch.Tensor, passes: list[dict]
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The copy channel over one history's passes, as `patching.copy_hooks` computes it in a session: (per pass
    the gate's logits [T], the last pass's reads o_p [T, d] after the write of each position, its C). Each pass
    dict holds `h` [T, d] (final normed hidden states), `ids`, `mids` and `written` [T]."""
    d, kd = channel.hidden, channel.key_dims
    C = torch.zeros(1, d, kd)
    prev_id = torch.tensor([-1])
    logits, reads = [], None
    for i, q in enumerate(passes):
        h = q["h"].float()[None]
        ids, mids = q["ids"][None], q["mids"][None]
        valid = torch.ones_like(ids, dtype=torch.bool)
        # a pass opens with the system prompt (never written), so the carried prev_h changes nothing: zeros
        h_prev = cp.shifted_keys(torch.zeros(1, d), h, valid)
        k = channel.key(h_prev, cp.shifted_ids(prev_id, ids, valid), E)
        logit = channel.mgate(cp.message_gate_inputs(h_prev, h, mids, valid)).squeeze(-1)
        beta = torch.sigmoid(logit) * q["written"][None]
        v = cp.values(E, ids)
        if i == len(passes) - 1:
            C, reads = cp.scan(C, k, v, beta, channel.query(h, ids, E))
        else:
            C, _ = cp.scan(C, k, v, beta)
        logits.append(logit[0])
        prev_id = ids[:, -1]
    return logits, reads[0], C


def episode_loss(channel: cp.CopyChannel, E: torch.Tensor, norms: torch.Tensor, lm_head, ex: dict
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer CE, gate BCE per written token) of one history through the product's copy-channel functions."""
    passes = ex["passes"]
    gate_logits, reads, _ = run_passes(channel, E, passes)
    labels = passes[-1]["labels"]
    rpos = (labels[1:] != IGNORE).nonzero().flatten()
    hp = passes[-1]["h"].float()[rpos]
    logits = lm_head(hp) + cp.read_generic(E, norms, channel.gain(hp) * reads[rpos])
    ce = F.cross_entropy(logits, labels[rpos + 1])
    w = torch.cat([q["written"] for q in passes])
    bce = F.binary_cross_entropy_with_logits(torch.cat(gate_logits)[w], torch.cat([q["target"] for q in passes])[w],
                                             pos_weight=torch.tensor(5.0)) if w.any() else torch.zeros(())
    return ce, bce


def with_distractor(rng: random.Random, data: list[dict], i: int) -> dict:
    """Example `i` with another history's write passes before or after its own (same kind when possible): the
    state then holds two facts and the answer is still example i's."""
    same = [j for j in range(len(data)) if j != i and data[j]["kind"] == data[i]["kind"]]
    j = rng.choice(same or [j for j in range(len(data)) if j != i])
    own, other = data[i]["passes"], data[j]["passes"][:-1]  # the other history's read pass is not replayed
    passes = other + own if rng.random() < 0.5 else own[:-1] + other + own[-1:]
    return {**data[i], "passes": passes}


def negative_loss(channel: cp.CopyChannel, E: torch.Tensor, norms: torch.Tensor, lm_head, other: dict, ex: dict
                  ) -> torch.Tensor:
    """KL(backbone ‖ backbone + read) at `ex`'s answer positions when the state holds `other`'s history (all its
    passes, then `ex`'s read pass): the read should add nothing when the state does not hold the asked fact."""
    last = ex["passes"][-1]
    _, reads, _ = run_passes(channel, E, other["passes"] + [last])
    labels = last["labels"]
    rpos = (labels[1:] != IGNORE).nonzero().flatten()
    hp = last["h"].float()[rpos]
    base = lm_head(hp)
    with_read = base + cp.read_generic(E, norms, channel.gain(hp) * reads[rpos])
    return F.kl_div(with_read.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="batchmean")


@torch.no_grad()
def gate_stats(channel: cp.CopyChannel, data: list[dict]) -> dict:
    """The gate on the runtime's features: share of value tokens written (β > 0.5), other tokens per 1,000."""
    val, other, n_other = [], 0, 0
    for ex in data:
        for q in ex["passes"]:
            h = q["h"].float()[None]
            valid = torch.ones(1, h.shape[1], dtype=torch.bool)
            h_prev = cp.shifted_keys(torch.zeros(1, h.shape[-1]), h, valid)
            beta = torch.sigmoid(channel.mgate(cp.message_gate_inputs(h_prev, h, q["mids"][None], valid)))[0, :, 0]
            w = q["written"]
            val += beta[w & (q["target"] > 0)].tolist()
            o = beta[w & (q["target"] == 0)]
            other += int((o > 0.5).sum())
            n_other += len(o)
    return {"value_written": round(sum(b > 0.5 for b in val) / max(len(val), 1), 3),
            "other_written_per_1k": round(1000 * other / max(n_other, 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="an adapter directory with a message-gated copy channel")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--bank", type=int, default=600)
    ap.add_argument("--lo", type=int, default=40)
    ap.add_argument("--hi", type=int, default=400)
    ap.add_argument("--budgets", default="192,256,384", help="window budgets the passes are planned with")
    ap.add_argument("--closed", type=int, default=0,
                    help="add this many histories of the closed kinds (colour, food, sport, drink) to the pool")
    ap.add_argument("--answers", choices=sorted(ANSWERS), default="sentence")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--gate-weight", type=float, default=1.0)
    ap.add_argument("--p-neg", type=float, default=0.0,
                    help="share of examples whose state holds another history only (KL to the backbone)")
    ap.add_argument("--neg-weight", type=float, default=1.0)
    ap.add_argument("--p-distract", type=float, default=0.0,
                    help="share of the other examples whose state also holds a second history's fact")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from deltamem_agents.chat.loading import load_model
    from deltamem_agents.patching.adapter_io import save_adapter

    model, tok = load_model(adapter=args.init)
    adapter = model.deltamem
    ch = adapter.copy
    if ch is None or ch.gate_kind != "message":
        raise SystemExit(f"{args.init}: needs a copy channel with a message gate")
    rend = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    pool_path = out / "pool.pt"
    if pool_path.exists():
        data = torch.load(pool_path, weights_only=False)
    else:
        data = pool(model, tok, rend, args, training_items(tok, args), args.seed * 7_919 + 13)
        torch.save(data, pool_path)
    if args.closed:  # closed-kind histories beside the open-set pool (their own cache file)
        closed_path = out / f"closed_pool_{args.closed}.pt"
        if closed_path.exists():
            closed = torch.load(closed_path, weights_only=False)
        else:
            closed = pool(model, tok, rend, args, closed_items(args), args.seed * 7_919 + 31)
            torch.save(closed, closed_path)
        data = data + closed
    E = model.get_input_embeddings().weight.detach()
    norms = cp.embedding_norms(E)
    W = model.lm_head.weight.detach()
    lm_head = lambda h: F.linear(h, W)  # noqa: E731  (the base head; tied for SmolLM2)
    for p in adapter.parameters():
        p.requires_grad_(False)
    params = list(ch.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ckpt = out / "ckpt.pt"
    step = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        ch.load_state_dict(saved["channel"])
        opt.load_state_dict(saved["opt"])
        step = saved["step"]
    meta = {"init": args.init, "args": {k: v for k, v in vars(args).items()}, "before": gate_stats(ch, data[:60])}
    log = out / "train.jsonl"
    t0 = time.time()
    with tqdm(total=args.steps, initial=step, desc="copy in context") as bar:
        while step < args.steps:
            rng = random.Random(step)
            pick = rng.sample(range(len(data)), args.batch)
            neg = [i for i in pick if rng.random() < args.p_neg]
            pos = [i for i in pick if i not in neg] or pick[:1]
            exs = [with_distractor(rng, data, i) if rng.random() < args.p_distract else data[i] for i in pos]
            ces, bces = zip(*(episode_loss(ch, E, norms, lm_head, ex) for ex in exs))
            ce, bce = torch.stack(ces).mean(), torch.stack(bces).mean()
            kl = torch.stack([negative_loss(ch, E, norms, lm_head, data[(i + 1) % len(data)], data[i])
                              for i in neg]).mean() if neg else torch.zeros(())
            loss = ce + args.gate_weight * bce + args.neg_weight * kl
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(ce=f"{float(ce):.3f}", bce=f"{float(bce):.3f}", kl=f"{float(kl):.3f}")
            with log.open("a") as f:
                f.write(json.dumps({"step": step, "ce": round(float(ce), 4), "bce": round(float(bce), 4),
                                    "kl": round(float(kl), 4),
                                    "s": round(time.time() - t0, 1)}) + "\n")
            if step % args.ckpt_every == 0 or step == args.steps:
                torch.save({"channel": ch.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    meta["after"] = gate_stats(ch, data[:60])
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta["before"]), "->", json.dumps(meta["after"]))
    save_adapter(model, out / "adapter", info={"copy_channel_incontext": {"from": args.init, "steps": step,
                                                                          "gate": meta["after"]}})
    print(out / "adapter")


if __name__ == "__main__":
    main()
