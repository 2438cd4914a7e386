"""Oracle-write diagnostic: can δ-mem's read path carry a fact's value to the answer when *what to write* is
given? Token writes (TSW) where only the value's tokens in the fact message are written (every other token
has message id -1, i.e. is read but not written), no writes in the read pass. Counterfactual twins (same
episode, another value) locate the value span: it is where the twins' tokens differ.

Trains a fresh centred adapter on a pool of training pairs (minibatches of pairs, cross-state margin
contrast as in twin_overfit.py) and prints the cross-state gap (nats: loss of the answer under the twin's
state minus under its own) and the pairwise accuracy (own state gives the lower loss) on training pairs
and on held-out pairs (held-out templates and seeds) every `--every` steps.

    python lab/scripts/oracle_write.py --pairs 64 --batch 4 --steps 120
    python lab/scripts/oracle_write.py --mode all ...   # same, but every history token written (plain TSW)
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.datasets.counterfactual import counterfactual
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.train.calibrate import calibrate_input_centers
from deltamem_agents.runtime.replay import IGNORE, EpisodePasses, build_passes
from deltamem_agents.datasets.sampler import EpisodeSampler
from deltamem_agents.train.trainer import run_passes

KINDS = ["colour", "food", "sport", "drink"]


def value_span(a: list[int], b: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where two token lists differ: [p, len-s) in each, p/s the common prefix/suffix lengths."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return (p, len(a) - s), (p, len(b) - s)


def oracle(pa: EpisodePasses, pb: EpisodePasses, mode: str) -> tuple[EpisodePasses, EpisodePasses] | None:
    """The pair with writes restricted to the value span and none in the read pass (mode 'oracle'), or the
    runtime's writes unchanged (mode 'all'). None if the twins' passes do not align."""
    if len(pa.write_passes) != len(pb.write_passes) or not pa.write_passes:
        return None
    qa = pa.labels.index(next(x for x in pa.labels if x != IGNORE))
    qb = pb.labels.index(next(x for x in pb.labels if x != IGNORE))
    if pa.read_ids[:qa - 4] != pb.read_ids[:qb - 4]:  # the fact must be out of the window
        return None
    wa, wb, found = [], [], 0
    for (ia, ma), (ib, mb) in zip(pa.write_passes, pb.write_passes):
        if ia == ib:
            keep_a = keep_b = (0, 0)
        else:
            keep_a, keep_b = value_span(ia, ib)
            found += 1
            if max(keep_a[1] - keep_a[0], keep_b[1] - keep_b[0]) > 8:
                return None
        if mode == "oracle":  # passes without writes leave a zero state; tokens after the span change nothing
            if ia == ib:
                continue
            ia, ib = ia[:keep_a[1]], ib[:keep_b[1]]
            ma = [m if keep_a[0] <= i < keep_a[1] else -1 for i, m in enumerate(ma[:keep_a[1]])]
            mb = [m if keep_b[0] <= i < keep_b[1] else -1 for i, m in enumerate(mb[:keep_b[1]])]
        wa.append((ia, ma)); wb.append((ib, mb))
    if found != 1:
        return None
    if mode == "oracle":  # the read pass writes nothing
        ra = EpisodePasses(wa, pa.read_ids, [-1] * len(pa.read_ids), pa.labels)
        rb = EpisodePasses(wb, pb.read_ids, [-1] * len(pb.read_ids), pb.labels)
    else:  # as the runtime: the read pass writes its new messages (the question) with the adapter's own selection
        ra = EpisodePasses(wa, pa.read_ids, pa.read_mids, pa.labels)
        rb = EpisodePasses(wb, pb.read_ids, pb.read_mids, pb.labels)
    return ra, rb


def make_pairs(sampler, renderer, policy, n, split, seed0, mode, distance):
    out, seed = [], seed0
    while len(out) < n:
        ep = sampler.generate_one(seed, split, mix={"fact": 1.0}, distance_range=(distance, distance))
        pa, pb = build_passes(ep, renderer, policy), build_passes(counterfactual(ep, seed), renderer, policy)
        pr = oracle(pa, pb, mode)
        if pr is not None:
            out.append((pr, (pa, pb)))
        seed += 1
    return out


def pair_loss(model, pa, pb):
    la, _, sa, _ = run_passes(model, pa)
    lb, _, sb, _ = run_passes(model, pb)
    lab = run_passes(model, pa.read_only(), state=sb.rebased())[0]
    lba = run_passes(model, pb.read_only(), state=sa.rebased())[0]
    ga, gb = lab - la, lba - lb
    loss = la + lb + torch.relu(1 - ga) + torch.relu(1 - gb)
    return loss, [ga.item(), gb.item()], ((la + lb) / 2).item()


def evaluate(model, pairs):
    gaps, own = [], []
    with torch.no_grad():
        for (pa, pb), _ in pairs:
            _, g, o = pair_loss(model, pa, pb)
            gaps += g; own.append(o)
    return {"gap": sum(gaps) / len(gaps), "acc": sum(g > 0 for g in gaps) / len(gaps), "own": sum(own) / len(own)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta-bias", type=float, default=1.0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--mode", choices=["oracle", "all"], default="oracle")
    ap.add_argument("--distance", default="60", help="fact distance(s), comma-separated: pairs split evenly")
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-seed", type=int, default=0, help="first seed of the training pairs (held-out pairs "
                    "always start at 100000): a continuation can draw pairs its init never saw")
    ap.add_argument("--save", default="")
    ap.add_argument("--init", default="", help="adapter dir to fine-tune (its config, e.g. write_threshold, is "
                    "used); with --mode all the adapter's own selective writes are trained in the loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_backbone()
    model.to(torch.bfloat16)
    if args.init:
        from deltamem_agents.patching.adapter_io import load_adapter

        ad = load_adapter(model, args.init)
    else:
        ad = attach(model, DeltaMemConfig(write_granularity="token", rank=args.rank, beta_bias_init=args.beta_bias,
                                          center_inputs=True))
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    sampler = EpisodeSampler(tok, value_kinds=KINDS, mix={"fact": 1.0}, in_window_frac=0.0)
    policy = WindowPolicy(budget=args.budget, reserve=48)
    dists = [int(x) for x in str(args.distance).split(",")]
    train = [p for i, d in enumerate(dists) for p in make_pairs(sampler, renderer, policy, args.pairs // len(dists),
                                                               "train", args.train_seed + 10_000 * i, args.mode, d)]
    held = [p for i, d in enumerate(dists) for p in make_pairs(sampler, renderer, policy, args.heldout // len(dists),
                                                              "heldout", 100_000 + 1000 * i, args.mode, d)]
    if not args.init:
        calibrate_input_centers(model, [p for _, raw in train[:8] for p in raw])
    opt = torch.optim.AdamW(ad.parameters(), lr=args.lr, weight_decay=0.0)
    rng = random.Random(0)
    t0 = time.time()
    print(json.dumps({"args": vars(args), "written_tokens_mean": sum(
        sum(m >= 0 for _, ms in pa.write_passes for m in ms) for (pa, _), _ in train) / len(train)}), flush=True)
    for step in range(args.steps + 1):
        if step % args.every == 0:
            row = {"step": step, "s": round(time.time() - t0)}
            row |= {f"train_{k}": round(v, 4) for k, v in evaluate(model, train[:8]).items()}
            row |= {f"held_{k}": round(v, 4) for k, v in evaluate(model, held).items()}
            print(json.dumps(row), flush=True)
            if args.save:  # a checkpoint at every report: a killed run keeps its last one
                save_weights(ad, args.save)
        if step == args.steps:
            break
        opt.zero_grad()
        for (pa, pb), _ in rng.sample(train, args.batch):
            loss = pair_loss(model, pa, pb)[0]
            (loss / args.batch).backward()
        opt.step()
    if args.save:
        save_weights(ad, args.save)


def save_weights(adapter, path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, path)


if __name__ == "__main__":
    main()
