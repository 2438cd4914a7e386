"""Why an update does not overwrite: the write keys of an old and a new value, and what the question reads.

For held-out update episodes (a fact stated, later changed; docs/research-log.md §12c) this captures, per δ-mem layer,
the key k̂, value v and gate β̄ at the tokens of the old value where it was stated and of the new value in the
update, and the query q̂ at the token that predicts the answer's first token. It reports, averaged over layers
and episodes (only tokens the layer actually writes, β̄ ≥ the adapter's threshold):
  cos(k_old, k_new)          the delta rule replaces the old value only along the new key: near 1 = overwrite
  cos(k_new, k_other_kind)   the same for a value of another relation (another episode): should be low
  cos(k_new, k_same_kind)    a value of the same relation in another episode: a relation-level key is high here
  q·k_old, q·k_new           how strongly the question's query addresses each write
  cos(S q, v_old), cos(S q, v_new)  which value the final state's read-out points at

    PYTHONPATH=. python lab/scripts/update_keys.py --adapter default --n 24
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F

from deltamem_agents.chat.loading import load_model
from deltamem_agents.patching.forward import forward_with_state
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import IGNORE, build_passes
from deltamem_agents.train.gates import token_classes, value_token_labels
from deltamem_agents.datasets.sampler import EpisodeSampler

KINDS = ["colour", "food", "sport", "drink"]


class Capture:
    """Wraps every memory layer's `project` to keep its last outputs (q̂, k̂, v, β), per call."""

    def __init__(self, layers) -> None:
        self.out: dict[int, tuple[torch.Tensor, ...]] = {}
        for i, layer in enumerate(layers):
            orig = layer.project

            def wrapped(x, _i=i, _orig=orig):
                res = _orig(x)
                self.out[_i] = tuple(t.detach()[0, :, 0] for t in res)  # batch 0, state head 0: [T, r]
                return res

            layer.project = wrapped


@torch.no_grad()
def episode_vectors(model, cap: Capture, renderer, ep, pol) -> dict:
    """Per layer: mean k̂/v over written old/new value tokens, the answer-predicting query, the final state."""
    old, new = ep.meta["old_value"].lower(), ep.meta["value"].lower()
    olds = {i: m for i, m in value_token_labels(ep, renderer, {old}).items() if i < ep.fact_index}
    news = value_token_labels(ep, renderer, {new})
    p = build_passes(ep, renderer, pol)
    adapter = model.deltamem
    tau = adapter.config.write_threshold
    acc: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    st = adapter.zero_state(1, "cpu")
    for ids, mids in p.write_passes:
        out = forward_with_state(model, torch.tensor([ids]), st, skip_lm_head=True,
                                 message_ids=torch.tensor([mids]), use_cache=False)
        st = out.state
        for name, lab in (("old", olds), ("new", news)):
            cls = torch.tensor(token_classes(mids, lab, len(ep.messages))) == 1
            for li, (_, k, v, beta) in cap.out.items():
                sel = cls & (beta.mean(-1) >= tau)
                if sel.any():
                    acc[li]["k_" + name].append(k[sel].mean(0))
                    acc[li]["v_" + name].append(v[sel].mean(0))
    forward_with_state(model, torch.tensor([p.read_ids]), st, skip_lm_head=True,
                       message_ids=torch.tensor([p.read_mids]), use_cache=False, write=False)
    first = next(i for i, y in enumerate(p.labels) if y != IGNORE) - 1  # labels are aligned to the input ids
    res = {}
    for li, (q, _, _, _) in cap.out.items():
        d = {n: torch.stack(x).mean(0) for n, x in acc[li].items()}
        d["q"] = q[first]
        d["Sq"] = st.S[li, 0, 0] @ q[first]
        res[li] = d
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(None, a.adapter)
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    cap = Capture(model.deltamem.layers)
    sampler = EpisodeSampler(tok, seed=11, total_steps=1, value_kinds=KINDS, in_window_frac=0.0,
                             mix={"update": 1.0}, budget_range=(128, 128), distance_start=150, distance_end=150)
    pol = WindowPolicy(budget=128, reserve=48)
    eps = [sampler.generate_one(20_000 + i, "heldout", mix={"update": 1.0}, distance_range=(150, 150))
           for i in range(a.n)]
    vecs = [episode_vectors(model, cap, renderer, ep, pol) for ep in eps]
    kinds = [ep.meta["relation"] for ep in eps]
    stats = defaultdict(list)
    per_layer = defaultdict(lambda: defaultdict(list))
    cos = lambda x, y: float(F.cosine_similarity(x, y, dim=0))  # noqa: E731
    for i, vi in enumerate(vecs):
        for li, d in vi.items():
            if "k_old" in d and "k_new" in d:
                stats["cos(k_old,k_new)"].append(cos(d["k_old"], d["k_new"]))
                per_layer[li]["cos(k_old,k_new)"].append(cos(d["k_old"], d["k_new"]))
                per_layer[li]["|q.k_old|"].append(abs(float(d["q"] @ d["k_old"])))
                per_layer[li]["|q.k_new|"].append(abs(float(d["q"] @ d["k_new"])))
                stats["q.k_old"].append(float(d["q"] @ d["k_old"]))
                stats["q.k_new"].append(float(d["q"] @ d["k_new"]))
                stats["cos(Sq,v_old)"].append(cos(d["Sq"], d["v_old"]))
                stats["cos(Sq,v_new)"].append(cos(d["Sq"], d["v_new"]))
            for j, vj in enumerate(vecs):
                if j == i or "k_new" not in d or "k_old" not in vj[li]:
                    continue
                key = "cos(k_new,k_same_kind)" if kinds[i] == kinds[j] else "cos(k_new,k_other_kind)"
                stats[key].append(cos(d["k_new"], vj[li]["k_old"]))
    print(json.dumps({"adapter": a.adapter, "n": a.n,
                      **{k: round(sum(v) / len(v), 3) for k, v in stats.items()},
                      "counts": {k: len(v) for k, v in stats.items()}}, indent=1))
    print("per layer (layer: cos(k_old,k_new) |q.k_old| |q.k_new| n):")
    for li in sorted(per_layer):
        d = per_layer[li]
        print(li, *(f"{sum(v) / len(v):.3f}" for v in d.values()), len(d["cos(k_old,k_new)"]))


if __name__ == "__main__":
    main()
