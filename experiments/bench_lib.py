"""Helpers for the benchmarks: interleaved timing, peak-memory sampling, the matmul peak of this machine, a machine
description and the results writer (FLOP counts come from ``jaxshape.flops``). Nothing here asserts a timing."""
from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

# ----------------------------------------------------------------------------------------------- timing


def block(x):
    return jax.block_until_ready(x)


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every fn ``warmup`` times, then ``reps`` rounds of (fn_1, fn_2, ...) in turn; seconds per call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t)
    return out


def median_seconds(fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    """Median seconds per call of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    return statistics.median(interleaved({"fn": fn}, reps, warmup)["fn"])


def summary(ts: list[float]) -> tuple[float, float]:
    return min(ts), statistics.median(ts)


class PeakRSS:
    """Peak resident-set growth while the block runs (sampled every ``interval`` s in a thread)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.delta = self.peak - self.base


def matmul_peak(n: int = 2048, reps: int = 7) -> dict[str, float]:
    """fp32 matmul GFLOP/s of jax.jit and torch (interleaved, min time)."""
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a)
    f = jax.jit(lambda x, y: x @ y)
    ta = torch.from_numpy(a)
    ts = interleaved({"jax": lambda: block(f(ja, ja)), "torch": lambda: torch.mm(ta, ta)}, reps, warmup=2)
    return {k: 2 * n**3 / min(v) / 1e9 for k, v in ts.items()}


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_isa() -> str:
    """The vector / matrix extensions of this CPU that matter to XLA:CPU, oneDNN and PyTorch (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in ISA_FLAGS if f in have) or "none of " + " ".join(ISA_FLAGS)
    except OSError:
        pass
    return "?"


def machine_description(allocator: bool = True) -> str:
    """CPU, memory, library versions, torch threads, (``allocator``:) the host-allocator setting, and the load."""
    import flax
    import torch

    from jaxshape import cpu_allocator

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    load = os.getloadavg()
    return (f"{cpu} (ISA: {cpu_isa()}), {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, "
            f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); " + (f"{cpu_allocator.describe()}; " if allocator else "") +
            f"load average at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def write_markdown(path: str, lines: list[str]) -> None:
    """Write a results table (lines joined by newlines), creating the folder; says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}")
