"""Run the memory probe over distances and write JSONL rows plus a markdown summary (resumable).

    deltamem-agents eval memory --adapter runs/ssw-r8/checkpoint-last/adapter --n 100 --distances 500,1000
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .probe import CONDITIONS, EMPTY_FROZEN, FROZEN
from .rowlock import exclusive_rows
from .stats import bootstrap_ci, paired_diff_ci


def run_probe(*, adapter: str, n: int, distances: list[int], budget: int, out: Path, seed: int,
              conditions: list[str], split: str = "heldout", kind: str = "fact", threads: int = 2,
              show_progress: bool = True, value_kinds: list[str] | None = None, max_new_tokens: int = 16,
              lora: str | None = None, label: str | None = None, model_dir: str | None = None) -> str:
    """The memory probe over seeded episodes, appended to `out` (resumable); rows name the arm `label` (default: the
    adapter, or `lora:<dir>`)."""
    import torch
    from tqdm.auto import tqdm

    from ..chat.loading import load_model
    from ..datasets.synthetic import generate
    from ..runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from ..runtime.window import WindowPolicy
    from .probe import MemoryProbe

    torch.set_num_threads(threads)
    if lora:  # the LoRA control: backbone + merged LoRA, no δ-mem (merged in place: not the cached model)
        from ..backbone import load_backbone
        from ..patching.lora import load_lora_control

        if adapter not in (None, "none") or set(conditions) - {"window", "full"}:
            raise ValueError("--lora evaluates a LoRA control without δ-mem: use --adapter none and only the "
                             "window/full conditions")
        model, tok = load_backbone(model_dir)
        model = load_lora_control(model, lora)
        adapter = f"lora:{lora}"
    else:
        model, tok = load_model(model_dir, adapter)
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    probe = MemoryProbe(model, tok, renderer, max_new_tokens=max_new_tokens)
    policy = WindowPolicy(budget=budget, reserve=48)
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_rows(out):  # one writer: a second run on this file would write every row twice
        done = set()
        if out.exists():
            for line in out.read_text().splitlines():
                r = json.loads(line)
                done.add((r["distance"], r["episode"]))
        with out.open("a") as f:
            for d in distances:
                if kind == "babi":  # bAbI *test* stories (tasks 1,2,3,5,6,7) as they are; the distance is only a label
                    from ..datasets.babi import babi_episodes

                    eps = babi_episodes(None, split="test", max_items=max(1, n // 6 + 1), seed=seed)[:n]
                    n = len(eps)
                elif value_kinds:  # only questions whose answer is of these kinds (e.g. the closed-set curriculum)
                    eps = kind_episodes(tok, n, d, seed, split, value_kinds, kind)
                else:
                    eps = generate(n, seed=seed * 100_003 + d, split=split, mix={kind: 1.0}, distance_range=(d, d),
                                   count_tokens=count)
                todo = [i for i in range(n) if (d, i) not in done]
                # states for the shuffled control come from the neighbouring episode: keep pairs together
                for i in tqdm(todo, desc=f"probe d={d}", disable=not show_progress):
                    pair = [eps[i], eps[(i + 1) % n]]
                    # eps[i+1] only donates its state; keyed, so it is not written again as the next episode's own
                    rows = probe.run(pair, policy, conditions, score={0}, keys=[(kind, d, i), (kind, d, (i + 1) % n)])
                    for r in rows:
                        if r["episode"] == 0:
                            r.update(episode=i, distance=d, budget=budget, split=split, adapter=label or str(adapter),
                                     max_new_tokens=max_new_tokens)
                            f.write(json.dumps(r) + "\n")
                    f.flush()
    text = summarize(out)
    out.with_suffix(".md").write_text(text)
    print(text)
    return text


def add_probe_args(ap: Any, *, kind: str = "fact") -> None:
    """The memory probe's options on an argparse parser, for benchmark scripts that alter the adapter and then
    call `probe_from_args` (same defaults and episodes as `deltamem-agents eval memory`)."""
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--kind", default=kind)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--distances", default="150")
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--value-kinds", default="colour,food,sport,drink")
    ap.add_argument("--conditions", default="deltamem,shuffled")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)


def probe_from_args(a: Any, *, label: str) -> None:
    """`run_probe` with the options `add_probe_args` defined (seed 0, as `deltamem-agents eval memory`)."""
    run_probe(adapter=a.adapter, n=a.n, distances=[int(d) for d in a.distances.split(",")], budget=a.budget,
              out=a.out, seed=0, conditions=a.conditions.split(","), kind=a.kind, threads=a.threads,
              value_kinds=a.value_kinds.split(","), max_new_tokens=a.max_new_tokens, label=label)


def kind_episodes(tok: Any, n: int, distance: int, seed: int, split: str, value_kinds: list[str] | None,
                  kind: str = "fact") -> list[Any]:
    """The probe's seeded episodes whose answers are of `value_kinds`, fact `distance` tokens back (the same
    episodes for eval memory and eval harm at the same seed and distance)."""
    from ..datasets.sampler import EpisodeSampler

    sampler = EpisodeSampler(tok, value_kinds=value_kinds)
    return [sampler.generate_one(seed * 100_003 + distance * 1_009 + i, split, mix={kind: 1.0},
                                 distance_range=(distance, distance)) for i in range(n)]


def summarize(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by: dict[tuple[int, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        by[(r["distance"], r["condition"])][r["episode"]] = float(r["correct"])
    dists = sorted({d for d, _ in by})
    conds = [c for c in (*CONDITIONS, *FROZEN, EMPTY_FROZEN) if any((d, c) in by for d in dists)]
    pairs = [("deltamem", o) for o in ("shuffled", "counterfactual", "window") if o in conds and "deltamem" in conds]
    if "deltamem_frozen" in conds:
        pairs += [("deltamem_frozen", o) for o in ("shuffled_frozen", "window") if o in conds]
    if EMPTY_FROZEN in conds:  # what the state adds over the adapter's task path alone
        pairs += [(a, EMPTY_FROZEN) for a in ("deltamem", "deltamem_frozen") if a in conds]
    name = {"deltamem": "δ-mem", "deltamem_frozen": "δ-mem frozen", "shuffled_frozen": "shuffled frozen",
            EMPTY_FROZEN: "no state (task path)"}
    lines = ["| " + " | ".join(["distance", "n", *conds, *(f"{name[a]} − {name.get(o, o)}" for a, o in pairs)]) + " |",
             "|---" * (len(conds) + len(pairs) + 2) + "|"]
    for d in dists:
        cells = []
        for c in conds:
            xs = list(by.get((d, c), {}).values())
            m, lo, hi = bootstrap_ci(xs)
            cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if xs else "–")
        diffs = []
        for mine, other in pairs:
            a, b = by.get((d, mine), {}), by.get((d, other), {})
            keys = sorted(set(a) & set(b))
            if keys:
                m, lo, hi = paired_diff_ci([a[k] for k in keys], [b[k] for k in keys])
                diffs.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            else:
                diffs.append("–")
        n = len(by.get((d, "deltamem"), by.get((d, conds[0]), {})))
        lines.append("| " + " | ".join([str(d), str(n), *cells, *diffs]) + " |")
    return "\n".join(lines) + "\n"


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


Paths = Path | Sequence[Path]


def arm_rows(paths: Paths, cond: str, label: str) -> dict[tuple[int, int], dict[str, Any]]:
    """One arm's rows by (distance, episode), from one run or several (e.g. one file per distance). A pair found in
    two files must agree on the gold answer and the score, else the files are not runs of the same episodes."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for path in [paths] if isinstance(paths, Path) else paths:
        for r in rows_of(path):
            if r["condition"] != cond:
                continue
            key = (r["distance"], r["episode"])
            old = rows.setdefault(key, r)
            if (old["gold"], float(old["correct"])) != (r["gold"], float(r["correct"])):
                raise ValueError(f"{label}: {path} disagrees with another file at distance {key[0]} episode {key[1]}")
    if not rows:
        raise ValueError(f"{paths} has no rows of condition {cond!r} ({label})")
    return rows


def compare(arms: list[tuple[str, Paths, str]], *, base: int = 0, score: str = "correct") -> str:
    """Paired differences between arms of *different* eval memory runs over the same seeded episodes.

    `arms` = [(label, rows path or paths, condition)]; runs made with the same --seed/--n/--value-kinds hold the
    same episodes under the same (distance, episode) keys, so those pair them. Refuses runs whose shared episodes
    disagree on the gold answer (not the same episodes). Each arm is compared with arms[base]. `score` is the row
    field compared: "correct" (the gold answer), or "says_old" (update probes: the answer names the old value)."""
    data = [arm_rows(paths, cond, label) for label, paths, cond in arms]
    keys = sorted(set.intersection(*(set(d) for d in data)))
    if not keys:
        raise ValueError("the runs share no (distance, episode) pairs: not the same episodes")
    for d, (label, path, _) in zip(data[1:], arms[1:]):
        bad = [k for k in keys if d[k]["gold"] != data[0][k]["gold"]]
        if bad:
            raise ValueError(f"{path} ({label}) is not the same episodes as {arms[0][1]}: gold differs at {bad[:3]}")
    ref = arms[base][0]
    lines = ["| distance | n | " + " | ".join(a[0] for a in arms) + " | "
             + " | ".join(f"{a[0]} − {ref}" for i, a in enumerate(arms) if i != base) + " |",
             "|---" * (2 + len(arms) + len(arms) - 1) + "|"]
    for dist in sorted({k[0] for k in keys}):
        ks = [k for k in keys if k[0] == dist]
        vals = [[float(d[k][score]) for k in ks] for d in data]
        cells = ["%.2f [%.2f, %.2f]" % bootstrap_ci(v) for v in vals]
        diffs = ["%+.2f [%+.2f, %+.2f]" % paired_diff_ci(v, vals[base]) for i, v in enumerate(vals) if i != base]
        lines.append(f"| {dist} | {len(ks)} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines) + "\n"


def plot_arms(arms: list[tuple[str, Paths, str]], path: Path, *, title: str) -> Path:
    """Accuracy vs distance for each arm over all its episodes (bootstrap 95% bars), e.g. δ-mem beside the shuffled
    state and the LoRA control; the paired differences are compare()'s."""
    from .plots import plot_curves

    curves: dict[str, dict[int, list[float]]] = {}
    for label, paths, cond in arms:
        by_d: dict[int, list[float]] = defaultdict(list)
        for (dist, _), r in sorted(arm_rows(paths, cond, label).items()):
            by_d[dist].append(float(r["correct"]))
        curves[label] = dict(by_d)
    return plot_curves(curves, path, title=title, xlabel="fact distance (tokens before the question)")
