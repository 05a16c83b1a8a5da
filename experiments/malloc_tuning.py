"""What the host-allocator settings of ``jaxshape/cpu_allocator.py`` buy: every model's train step (jaxshape and the
PyTorch mirror, as in bench_models.py) in a process with glibc's default malloc and in one with the tunables, with
page faults and system time per step.

    python experiments/malloc_tuning.py [--sizes cpu,released] [--models ...] [--reps 5]

glibc reads its tunables at process start, so each (model, size, setting) runs in its own child process; settings
alternate (default, tuned) per case so slow drifts of the shared machine hit both. Writes
experiments/results/malloc_tuning.md. Prints tables, never asserts timings.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from jaxshape import cpu_allocator  # noqa: E402

SETTINGS = ("default", "tuned")


def child(name: str, size: str, reps: int) -> None:
    import bench_models as B
    from bench_lib import summary

    r = B.bench_case(name, size, reps, False)
    out = {"label": B.CASES[name][0], "allocator": cpu_allocator.describe()}
    for fw in ("jax", "torch"):
        run = r["runners"][fw]
        n = 3
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            run()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out[fw] = dict(step=summary(r["step"][fw]), fwd=summary(r["fwd"][fw]),
                       faults=(r1.ru_minflt - r0.ru_minflt) / n, sys=(r1.ru_stime - r0.ru_stime) / n,
                       user=(r1.ru_utime - r0.ru_utime) / n)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(name: str, size: str, reps: int, setting: str) -> dict:
    env = dict(os.environ)
    if setting == "tuned":
        env["GLIBC_TUNABLES"] = cpu_allocator.merged_tunables(env.get("GLIBC_TUNABLES"))
        env[cpu_allocator.APPLIED_ENV] = "1"
    else:
        env.pop("GLIBC_TUNABLES", None)
        env[cpu_allocator.SWITCH_ENV] = "0"
    proc = subprocess.run([sys.executable, __file__, "--child", name, size, str(reps)], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {name} {size} {setting} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv=None):
    import bench_models as B
    from bench_lib import machine_description, write_markdown

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="cpu,released")
    ap.add_argument("--models", default=",".join(B.CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "malloc_tuning.md"))
    args = ap.parse_args(argv)
    desc = machine_description(allocator=False)  # each child process has its own setting
    print(desc, flush=True)
    rows = []
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            res = {}
            for setting in SETTINGS:
                res[setting] = run_child(name, size, args.reps, setting)
                print(name, size, setting, json.dumps(res[setting]), flush=True)
            d, t = res["default"], res["tuned"]
            cells = [d["label"], size]
            for fw in ("jax", "torch"):
                ds, ts = d[fw]["step"][1], t[fw]["step"][1]
                cells += [f"{ds:.3f} → {ts:.3f} ({ds / ts:.2f}×)",
                          f"{d[fw]['faults']:,.0f} → {t[fw]['faults']:,.0f}",
                          f"{d[fw]['sys']:.2f} → {t[fw]['sys']:.2f}"]
            cells += [f"{d['torch']['step'][1] / d['jax']['step'][1]:.2f}× → "
                      f"**{t['torch']['step'][1] / t['jax']['step'][1]:.2f}×**"]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    load = os.getloadavg()
    write_markdown(args.out, [
        "# Host allocator: glibc default vs the tunables of jaxshape/cpu_allocator.py", "",
        f"Machine: {desc}; load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}.", "",
        f"Tunables: `GLIBC_TUNABLES={cpu_allocator.merged_tunables(None)}`.", "",
        f"Command: `python experiments/malloc_tuning.py --sizes {args.sizes} --models {args.models} "
        f"--reps {args.reps}`", "",
        "Each cell: default → tuned. Train step = forward + MSE + backward + AdamW, as in bench_models.py (jax: one "
        f"jitted step with donated state; torch eager), median of {args.reps} interleaved repetitions, fp32, "
        "batch 1, one child process per (case, setting). Page faults and system CPU time per step from "
        "getrusage over 3 further steps (system time is summed over both cores, so it can exceed the wall time's "
        "share). A tuned fault count above 0 means the heap was still growing towards its settled size in "
        "those 3 steps (it settles within a few steps and then stays mapped; see jaxshape/cpu_allocator.py).", "",
        "| model | size | jaxshape step (s) | jax minor faults / step | jax system s / step | torch eager step (s) | "
        "torch minor faults / step | torch system s / step | speed-up vs torch eager |",
        "|---" * 9 + "|", *rows, ""])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
