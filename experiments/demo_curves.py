"""The held-out metrics of a pipeline run against training time, and the first evaluation that meets each demo goal.

    python experiments/demo_curves.py --workdir /tmp/wd_long_trellis --name trellis_like_long \
        --sec-per-step ss_vae=1.09,ss_flow=0.38

Reads every stage's ``metrics.jsonl`` (the ``eval/...`` rows ``config.eval`` writes) and writes
``experiments/results/demo_curves_<name>.md`` (a table per stage) and ``.png`` (the curves). The time axis is
``step × --sec-per-step`` of the stage plus the evaluations' own measured ``eval/time_s`` (cumulative): pass the
median s/step of an unloaded run of the same config on the target machine, so a run that shared its machine (whose
own step times are longer) still gives the time a user would wait; without ``--sec-per-step`` the run's own logged
step times are summed. Goals (README / docs/evaluation.md): VAE IoU ≥ 0.8; flow class consistency ≥ 0.8 and
1-NNA-CD ≤ 0.75. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

GOALS = {"eval/recon_iou": (">=", 0.8), "eval/sample_class_consistency": (">=", 0.8),
         "eval/sample_1nna_cd": ("<=", 0.75)}
COLUMNS = {
    "vae": ["eval/recon_iou", "eval/recon_cd_l1", "eval/recon_f_0.02", "eval/recon_f_0.05"],
    "flow": ["eval/mse_mean", "eval/sample_1nna_cd", "eval/sample_cov_cd", "eval/sample_mmd_cd",
             "eval/sample_class_consistency", "eval/sample_class_consistency_of_heldout"],
}


def _rows(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def stage_curve(rows: list[dict], sec_per_step: float | None) -> list[dict]:
    """Evaluation rows with ``minutes``: training time to that step plus the evaluations so far."""
    train_s, eval_s, last_step, out = 0.0, 0.0, 0, []
    for r in rows:
        if "step_time_s" in r and sec_per_step is None:
            train_s += r["step_time_s"] * (r["step"] - last_step)
            last_step = r["step"]
        if any(k.startswith("eval/") for k in r):
            eval_s += r.get("eval/time_s", 0.0)
            t = r["step"] * sec_per_step if sec_per_step is not None else train_s
            out.append(dict(r, minutes=(t + eval_s) / 60))
    return out


def _met(key, value):
    op, goal = GOALS[key]
    return value >= goal if op == ">=" else value <= goal


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--sec-per-step", default="", help="stage=seconds,... (unloaded median s/step per stage)")
    p.add_argument("--note", default="", help="a line about the run (machine, load) for the results file")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = p.parse_args(argv)
    sps = {k: float(v) for k, v in (kv.split("=") for kv in a.sec_per_step.split(",") if kv)}
    order = [s for s in ("ss_vae", "ss_flow", "vecset_vae", "vecset_flow")
             if os.path.isdir(os.path.join(a.workdir, s))]  # a pipeline's stages, in training order
    lines = [f"# Held-out metrics against training time: `{a.name}`", ""]
    if a.note:
        lines += [a.note, ""]
    lines += ["Time = steps × the stage's unloaded s/step (" + (", ".join(f"{k} {v} s" for k, v in sps.items())
              or "the run's own logged step times") + ") + the evaluations' measured time, cumulative per stage. "
              "Goals: VAE IoU ≥ 0.8; flow class consistency ≥ 0.8, 1-NNA-CD ≤ 0.75.", ""]
    curves = {}
    for stage in order:
        path = os.path.join(a.workdir, stage, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        curve = stage_curve(_rows(path), sps.get(stage))
        if not curve:
            continue
        curves[stage] = curve
        cols = COLUMNS["vae" if stage.endswith("vae") else "flow"]
        cols = [c for c in cols if any(c in r for r in curve)]
        lines += [f"## {stage}", "", "| step | min | " + " | ".join(c[5:] for c in cols) + " |",
                  "|---" * (len(cols) + 2) + "|"]
        for r in curve:
            cells = [f"{r[c]:.4g}" if c in r else "" for c in cols]
            lines.append(f"| {r['step']} | {r['minutes']:.1f} | " + " | ".join(cells) + " |")
        for key in GOALS:
            hits = [r for r in curve if key in r and _met(key, r[key])]
            if any(key in r for r in curve):
                first = (f"first met at step {hits[0]['step']} ({hits[0]['minutes']:.1f} min of this stage)"
                         if hits else "not met in this run")
                lines.append(f"\n{key[5:]} {GOALS[key][0]} {GOALS[key][1]}: {first}.")
        lines.append("")
    md = os.path.join(a.out_dir, f"demo_curves_{a.name}.md")
    os.makedirs(a.out_dir, exist_ok=True)
    with open(md, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    _plot(curves, os.path.join(a.out_dir, f"demo_curves_{a.name}.png"), a.name)
    print(f"wrote {md}")
    return 0


def _plot(curves, path, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (stage, curve) in zip(axes[0], curves.items()):
        keys = (["eval/recon_iou", "eval/recon_f_0.02"] if stage.endswith("vae") else
                ["eval/sample_class_consistency", "eval/sample_1nna_cd", "eval/sample_cov_cd"])
        for k in keys:
            pts = [(r["minutes"], r[k]) for r in curve if k in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=k[5:])
        for k in keys:
            if k in GOALS:
                ax.axhline(GOALS[k][1], ls="--", lw=0.8, color="gray")
        ax.set_title(f"{name}: {stage}")
        ax.set_xlabel("minutes (training + evaluation)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
