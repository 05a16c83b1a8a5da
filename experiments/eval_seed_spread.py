"""How much the evaluation numbers of one checkpoint move with the evaluation seed alone, and what true shapes score.

    python experiments/eval_seed_spread.py --workdir WORKDIR [--stage S] [--seeds 0,1,2,3,4] [--num 16]

Runs ``jaxshape.evaluate.evaluate_workdir(workdir, num=num, seed=s)`` once per seed on the same checkpoint and the
same held-out shapes; the seed (``eval.seed``) drives the surface samples, the fixed noise of the bucket losses and
the sampler noise of the generated shapes. Per seed it also scores held-out shapes themselves, with no model:

* sampling floor: each reference shape against itself sampled with an independent seed, at ``eval.points`` and
  4 × that many points per shape (the Chamfer / F-score a perfect reconstruction gets from sampling alone);
* data against data (a flow stage): the set metrics a perfect generator would get, S = R = ``num``:
  (a) against the evaluation's own references (the first ``num`` held-out shapes), with a training shape of the same
  class (any training shape for feature conditioning), drawn by the seed, standing in for each generated one;
  (b) two disjoint random sets of ``num`` shapes of the whole held-out split, drawn by the seed.

Writes mean ± std (sample std, ddof 1), min and max over the seeds to experiments/results/eval_seed_spread.md
(``--out``) and prints the tables. ``--workdir-label`` names the workdir in the results file (default: its path).
Times are reported, never asserted.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from jaxshape.eval.protocol import generation_report, reconstruction_report  # noqa: E402
from jaxshape.evaluate import evaluate_workdir, reference_examples  # noqa: E402

INDEPENDENT = 1_000_003  # seed offset of the second draw of the sampling floor
SET_KEYS = ("mmd_cd", "cov_cd", "1nna_cd")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, min, max) of the finite values (NaN when there are none)."""
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return (math.nan,) * 4
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, std, min(v), max(v)


def spread_rows(per_seed: list[dict], keys) -> list[str]:
    rows = []
    for k in keys:
        mean, std, lo, hi = spread([m.get(k, math.nan) for m in per_seed])
        rel = f"{100 * std / abs(mean):.1f}%" if mean and math.isfinite(mean) else "-"
        rows.append(f"| {k} | {mean:.4g} ± {std:.2g} | {rel} | {lo:.4g} | {hi:.4g} |")
    return rows


def sampling_floor(rep: dict, seed: int) -> dict:
    """``{points per shape: reconstruction metrics of the references against an independent draw of themselves}``."""
    task, ex = rep["_task"], rep["_ref_examples"]
    n_ref = len(next(iter(ex.values())))
    out = {}
    for n in (task.config.eval.points, 4 * task.config.eval.points):
        a, b = task.reference_points(ex, n, seed), task.reference_points(ex, n, seed + INDEPENDENT)
        r = reconstruction_report(a, np.zeros(n_ref, bool), b)
        out[n] = {k.replace("@", "_"): v for k, v in r.items() if k != "empty"}
    return out


def training_candidates(task, labels, s: int, per_class: int = 8) -> dict:
    """Training-split examples to stand in for generated shapes: up to ``per_class`` × the references' count of
    each requested class (``labels`` of the references; ``None``: the first ``per_class * s`` examples), read in
    the split's order until there are enough."""
    from jaxshape.data.sources import make_data_iterator

    fields = tuple(dict.fromkeys(task.reference_fields + ("class_label",)))
    it = make_data_iterator(task.config.data, fields, task.family, process_index=0, process_count=1, one_epoch=True,
                            split="train", num_queries=task.eval_num_queries(task.config.eval.num_queries))
    want = ({int(c): per_class * int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
            if labels is not None else {None: per_class * s})
    keep = {k: [] for k in fields}
    for batch in it:
        for b in range(len(batch["class_label"])):
            c = int(batch["class_label"][b]) if labels is not None else None
            if want.get(c, 0) > 0:
                want[c] -= 1
                for k in fields:
                    keep[k].append(batch[k][b])
        if not any(want.values()):
            break
    return {k: np.stack(v) for k, v in keep.items()}


def data_against_data(task, heldout: dict, train: dict, seed: int, s: int) -> tuple[dict, dict]:
    """Set metrics of true shapes: ``(training shapes of the requested classes vs the evaluation's references,
    two random disjoint sets of the held-out split)``."""
    sp = task.config.eval.set_points
    rng = np.random.default_rng(seed)
    refs = task.reference_points({k: v[:s] for k, v in heldout.items()}, sp, seed)
    if "class_label" in task.cond_fields:
        picks = []
        for c in np.asarray(heldout["class_label"][:s]):
            cand = [j for j in np.flatnonzero(train["class_label"] == c) if j not in picks]
            picks.append(int(rng.choice(cand)))
    else:
        picks = rng.choice(len(train["class_label"]), s, replace=False).tolist()
    stand = task.reference_points({k: v[picks] for k, v in train.items()}, sp, seed + INDEPENDENT)
    g = generation_report(stand, np.zeros(s, bool), refs)
    matched = {k: g[k] for k in SET_KEYS}
    pts = task.reference_points(heldout, sp, seed)
    perm = rng.permutation(len(pts))
    g = generation_report(pts[perm[s:2 * s]], np.zeros(s, bool), pts[perm[:s]])
    return matched, {k: g[k] for k in SET_KEYS}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a trained stage's or a pipeline's workdir")
    ap.add_argument("--stage", default=None, help="stage of a pipeline workdir (default: its only flow stage)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--num", type=int, default=16, help="shapes generated (flow) or reconstructed (VAE) per seed")
    ap.add_argument("--workdir-label", default=None, help="how the results file names the workdir")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "eval_seed_spread.md"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        ap.error("--seeds needs at least one seed")
    s_n = args.num

    per_seed, reports, floors, matched, halves = [], [], [], [], []
    pool = None
    for s in seeds:
        t0 = time.perf_counter()
        rep = evaluate_workdir(args.workdir, stage=args.stage, num=s_n, seed=s)
        wall = time.perf_counter() - t0
        reports.append(rep)
        per_seed.append(rep["metrics"])
        shown = ", ".join(f"{k} {v:.4g}" for k, v in rep["metrics"].items() if isinstance(v, float))
        print(f"seed {s} ({wall:.0f} s): {shown}", flush=True)
        floors.append(sampling_floor(rep, s))
        print(f"seed {s} sampling floor: {floors[-1]}", flush=True)
        if "mse_mean" in rep["metrics"]:  # a flow stage: what true shapes score on the set metrics
            task = rep["_task"]
            if pool is None:
                pool = reference_examples(task, task.config, 1 << 30)  # the whole held-out split, in its order
                labels = pool["class_label"][:s_n] if "class_label" in task.cond_fields else None
                train = training_candidates(task, labels, s_n)
            m, h = data_against_data(task, pool, train, s, s_n)
            matched.append(m)
            halves.append(h)
            print(f"seed {s} data vs data: training shapes of the requested classes {m}; random held-out halves {h}",
                  flush=True)

    first = reports[0]
    task = first["_task"]
    keys = [k for k in per_seed[0] if k != "time_s" and isinstance(per_seed[0][k], (int, float))]
    times = spread([m.get("time_s", math.nan) for m in per_seed])
    n_ref = len(next(iter(first["_ref_examples"].values())))
    label = args.workdir_label or str(args.workdir)
    seeds_s = ",".join(map(str, seeds))
    head = ["| metric | mean ± std over seeds | std / mean | min | max |", "|---|---|---|---|---|"]
    table = [*head, *spread_rows(per_seed, keys)]
    print("\n".join(table))

    floor_keys = list(floors[0][next(iter(floors[0]))])
    floor_table = ["| points per shape | " + " | ".join(floor_keys) + " |", "|---" * (len(floor_keys) + 1) + "|"]
    for n in floors[0]:
        cells = [f"{m:.4g} ± {sd:.2g}" for m, sd, _, _ in (spread([f[n][k] for f in floors]) for k in floor_keys)]
        floor_table.append(f"| {n} | " + " | ".join(cells) + " |")
    print("\n".join(floor_table))

    data_lines = []
    if halves:
        labels = pool.get("class_label")
        ref_classes = sorted(set(np.asarray(labels[:s_n]).tolist())) if labels is not None else []
        data_table = ["| S = R = " + str(s_n) + " | " + " | ".join(SET_KEYS) + " |", "|---" * 4 + "|"]
        for name, rows in (("(a) training shapes of the requested classes vs the evaluation's references", matched),
                           ("(b) random disjoint sets of the whole held-out split", halves)):
            cells = [f"{m:.4g} ± {sd:.2g} ({lo:.3g}-{hi:.3g})"
                     for m, sd, lo, hi in (spread([r.get(k, math.nan) for r in rows]) for k in SET_KEYS)]
            data_table.append(f"| {name} | " + " | ".join(cells) + " |")
        print("\n".join(data_table))
        data_lines = [
            "## Data against data", "",
            f"What a perfect generator scores at this sample size: true shapes in place of the generated ones "
            f"({task.config.eval.set_points} points per shape, mean ± std (min-max) over the seeds). (a) The "
            f"evaluation's own references (the first {s_n} of the {len(next(iter(pool.values())))} held-out shapes "
            f"in id order; classes {ref_classes}) against, for each of them, a training shape of its class "
            "(conditioning on features: any training shape) drawn by the seed -- independent draws of the requested "
            f"classes. (b) Two disjoint sets of {s_n} shapes drawn at random from the whole held-out split by the "
            "seed (the spread then includes which shapes are the references).", "",
            *data_table, ""]

    used = (f"a flow's `mse_t*` bucket losses and the class-consistency pool use all of them, the set metrics the "
            f"first {s_n}" if halves else f"the first {s_n} are reconstructed")
    lines = [
        "# Evaluation numbers: spread over evaluation seeds", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores (CPU).", "",
        f"Workdir: {label}; stage `{first['stage']}`, step {first['step']} ({'EMA' if first['ema'] else 'raw'} "
        f"parameters); references: {first['reference']} ({n_ref} shapes read: {used}); S = R = {s_n} "
        f"shapes per evaluation; {len(seeds)} seeds ({seeds_s}).", "",
        f"Command: `python experiments/eval_seed_spread.py --workdir WORKDIR --seeds {seeds_s} --num {s_n}`", "",
        "One checkpoint and one set of held-out shapes; only `eval.seed` changes between the evaluations (surface "
        "samples of every shape, the fixed noise of the `mse_t*` bucket losses, the sampler noise of the generated "
        "shapes), so the spread is the evaluation's own noise at this sample size, not a difference between models. "
        "std is the sample standard deviation (ddof 1) over the seeds. Definitions: docs/evaluation.md.", "",
        *table, "",
        f"Evaluation wall time per seed: {times[0]:.1f} s mean ({times[2]:.1f}-{times[3]:.1f} s), on a shared "
        "machine (reported, not asserted).", "",
        "## Sampling floor", "",
        f"The {n_ref} reference shapes against themselves, sampled with an independent seed (shape i: seeds "
        f"`s + i` and `s + {INDEPENDENT} + i`): the reconstruction metrics a perfect reconstruction gets from "
        f"surface sampling alone, at `eval.points` = {task.config.eval.points} and 4 × that many points per shape "
        "(mean ± std over the seeds).", "",
        *floor_table, "",
        *data_lines,
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
