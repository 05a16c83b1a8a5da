"""Host-memory allocator settings for CPU runs (glibc Linux): stop XLA:CPU from page-faulting its temporaries anew on
every step.

XLA:CPU ``malloc``s each executable's temporary buffers when it runs and frees them afterwards (hundreds of MiB for a
small train step, GiBs at released widths). glibc serves blocks that large with a fresh ``mmap`` and returns them
with ``munmap``, so every step the kernel faults in and zeroes all of it again, one 4 KiB page at a time; PyTorch's
CPU allocator goes through the same ``malloc``. ``experiments/malloc_tuning.py`` measures the cost and the remedy
per model, for both frameworks (``docs/performance.md``, "Allocator tunables").

The remedy is three glibc tunables (:data:`MALLOC_TUNABLES`): one arena, no ``mmap`` for large blocks, never trim
the heap, so freed temporaries stay mapped and the next step reuses them (no faults once the heap has reached its
working size, which it does within the first few steps). The price: the process keeps its peak heap mapped until it
exits (as PyTorch's and JAX's GPU caching allocators do), and all threads share one malloc arena (fine for XLA's and
our pipeline's allocation pattern; a very malloc-heavy many-threaded host program could contend on it).
``glibc.malloc.hugetlb=1`` (transparent huge pages for the heap) in your own ``GLIBC_TUNABLES`` is faster still in
steady state but not a default: when the heap grows, the kernel may compact memory synchronously to find huge
pages, which stalls the step.

glibc reads tunables only at process start, so :func:`reexec_with_cpu_malloc_tunables` re-executes the current
command once with ``GLIBC_TUNABLES`` set; ``python -m jaxshape.train`` and the benchmarks in ``experiments/`` call it
first thing. It is **on by default for CPU runs** (:func:`wanted`: glibc Linux, and ``JAX_PLATFORMS`` is ``cpu`` or
unset with no accelerator plugin installed); ``JAXSHAPE_CPU_MALLOC=0`` turns it off, ``=1`` forces it on. Tunables
already in ``GLIBC_TUNABLES`` are kept and win over ours. Only on glibc Linux.

In a user's own process (a script or notebook) nothing changes unless they call :func:`tune`, which sets the same
three settings with ``mallopt`` (glibc honours it at any time; the trim threshold is capped at ``mallopt``'s ``int``,
2 GiB, and threads that already have their own arena keep it). It is not applied at import: measured in library mode
(docs/performance.md) it sped the SS-VAE steps up and slowed the DiT steps down.
"""
from __future__ import annotations

import os
import pkgutil
import platform
import sys
from typing import Optional, Sequence

MALLOC_TUNABLES = {
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(2**46),
}
SWITCH_ENV = "JAXSHAPE_CPU_MALLOC"
APPLIED_ENV = "JAXSHAPE_CPU_MALLOC_APPLIED"
ACCELERATOR_PLUGIN_PREFIXES = ("jax_cuda", "jax_rocm", "libtpu")


def parse_tunables(value: Optional[str]) -> dict:
    """``"a=1:b=2"`` -> ``{"a": "1", "b": "2"}`` (the ``GLIBC_TUNABLES`` syntax)."""
    out = {}
    for item in (value or "").split(":"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def merged_tunables(existing: Optional[str]) -> str:
    """Our tunables plus the caller's ``GLIBC_TUNABLES``; the caller's value wins for any key set in both."""
    merged = dict(MALLOC_TUNABLES)
    merged.update(parse_tunables(existing))
    return ":".join(f"{k}={v}" for k, v in merged.items())


def tunables_active(environ=None) -> bool:
    """Whether this process was started with all of :data:`MALLOC_TUNABLES` in ``GLIBC_TUNABLES`` (any values)."""
    env = os.environ if environ is None else environ
    return set(MALLOC_TUNABLES) <= set(parse_tunables(env.get("GLIBC_TUNABLES")))


def accelerator_plugin_installed() -> bool:
    """Whether a jax GPU/TPU plugin (``jax_cuda*``, ``jax_rocm*``, ``libtpu``) is importable, found without
    importing anything: with one, jax would run on the accelerator by default."""
    return any(m.name.startswith(ACCELERATOR_PLUGIN_PREFIXES) for m in pkgutil.iter_modules())


def runs_on_cpu(environ=None) -> bool:
    """Whether jax will run on its CPU backend: ``JAX_PLATFORMS`` lists only ``cpu``, or it is unset and no
    accelerator plugin is installed."""
    env = os.environ if environ is None else environ
    platforms = [p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return set(platforms) == {"cpu"}
    return not accelerator_plugin_installed()


def wanted(environ=None) -> bool:
    """Whether the tunables should be applied (glibc Linux only): ``JAXSHAPE_CPU_MALLOC=1`` yes, ``=0`` no, unset =
    when jax runs on its CPU backend (:func:`runs_on_cpu`). Any other value is an error."""
    env = os.environ if environ is None else environ
    switch = env.get(SWITCH_ENV, "").strip()
    if switch not in ("", "0", "1"):
        raise ValueError(f"{SWITCH_ENV} must be 0 or 1 (or unset), got {env[SWITCH_ENV]!r}")
    if switch == "0" or not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"):
        return False
    return switch == "1" or runs_on_cpu(env)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MALLOPT = {_M_ARENA_MAX: 1, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}
_tuned = {"by_mallopt": False}  # what tune() did in this process (the allocator is process-wide by nature)


def tune(force: bool = False) -> bool:
    """Apply :data:`MALLOC_TUNABLES` to this running process with ``mallopt`` (glibc Linux), when :func:`wanted` (or
    ``force``) and the process did not start with them already. Returns whether the allocator now runs with them.
    What it costs is what the tunables cost (module doc): the peak heap stays mapped until exit."""
    if tunables_active() or _tuned["by_mallopt"]:
        return True
    if not (force or wanted()) or not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"):
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    ok = all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in _MALLOPT.items())
    _tuned["by_mallopt"] = ok
    return ok


def describe(environ=None) -> str:
    """One line for logs and benchmark tables: which allocator settings this process runs with."""
    env = os.environ if environ is None else environ
    if tunables_active(env):
        return f"glibc malloc tunables on ({env['GLIBC_TUNABLES']})"
    if _tuned["by_mallopt"]:
        return "glibc malloc settings of the tunables applied by mallopt (cpu_allocator.tune)"
    return "default glibc malloc (tunables off)"


def reexec_with_cpu_malloc_tunables(argv: Optional[Sequence[str]] = None) -> None:
    """Re-execute this command (``sys.orig_argv``, or ``argv``) with :data:`MALLOC_TUNABLES` added to
    ``GLIBC_TUNABLES``, if :func:`wanted` and not already active; otherwise return. Call it before anything else
    (it replaces the process; output already buffered is flushed first). Re-executes at most once."""
    if os.environ.get(APPLIED_ENV) or tunables_active() or not wanted():
        return
    args = list(argv if argv is not None else getattr(sys, "orig_argv", []))
    if not args:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = merged_tunables(env.get("GLIBC_TUNABLES"))
    env[APPLIED_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + args[1:], env)
