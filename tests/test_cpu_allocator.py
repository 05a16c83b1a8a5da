"""Host-allocator settings (jaxshape/cpu_allocator.py): tunable merging, the switch, the one-time re-exec, and that
the tunables change how glibc serves and keeps large blocks."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxshape import cpu_allocator as CA

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
# a 100 MiB malloc and free, with glibc's counters (mallinfo2) during and after
MALLOC_100MIB = """
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in names]
        libc.mallinfo2.restype = MallInfo2
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        p = libc.malloc(100 << 20)
        during = libc.mallinfo2()
        libc.free(p)
        after = libc.mallinfo2()
"""


def test_merged_tunables_keep_the_callers_values():
    merged = CA.parse_tunables(CA.merged_tunables("glibc.malloc.arena_max=4:glibc.foo=1"))
    assert merged["glibc.malloc.arena_max"] == "4" and merged["glibc.foo"] == "1"
    assert merged["glibc.malloc.mmap_max"] == "0"
    assert CA.tunables_active({"GLIBC_TUNABLES": CA.merged_tunables(None)})
    assert not CA.tunables_active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})


def test_switch_values(monkeypatch):
    assert CA.wanted({CA.SWITCH_ENV: "0", "JAX_PLATFORMS": "cpu"}) is False
    assert CA.wanted({"JAX_PLATFORMS": "cpu"}) is GLIBC_LINUX  # on by default for CPU runs
    assert CA.wanted({"JAX_PLATFORMS": " CPU "}) is GLIBC_LINUX
    assert CA.wanted({"JAX_PLATFORMS": "cuda"}) is False
    assert CA.wanted({"JAX_PLATFORMS": "cuda,cpu"}) is False
    assert CA.wanted({CA.SWITCH_ENV: "1", "JAX_PLATFORMS": "tpu"}) is GLIBC_LINUX
    # JAX_PLATFORMS unset: decided by whether an accelerator plugin is installed
    monkeypatch.setattr(CA, "accelerator_plugin_installed", lambda: True)
    assert CA.wanted({}) is False
    monkeypatch.setattr(CA, "accelerator_plugin_installed", lambda: False)
    assert CA.wanted({}) is GLIBC_LINUX
    with pytest.raises(ValueError, match="JAXSHAPE_CPU_MALLOC must be 0 or 1"):
        CA.wanted({CA.SWITCH_ENV: "yes"})


def _run(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter with our allocator variables cleared, then ``env`` set."""
    drop = ("GLIBC_TUNABLES", CA.APPLIED_ENV, CA.SWITCH_ENV)
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist on glibc Linux only")
def test_reexec_applies_the_tunables_once_and_respects_the_off_switch():
    code = """
        import os
        print("start")
        from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
        reexec_with_cpu_malloc_tunables()
        print("TUNABLES", os.environ.get("GLIBC_TUNABLES"))
    """
    out = _run(code, JAXSHAPE_CPU_MALLOC="1", GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert out.count("start") == 2  # ran, re-executed once, ran again without a further exec
    tun = CA.parse_tunables(out.split("TUNABLES ")[1].strip())
    assert tun["glibc.malloc.arena_max"] == "2" and tun["glibc.malloc.mmap_max"] == "0"
    out = _run(code, JAX_PLATFORMS="cpu")  # default for CPU runs
    assert out.count("start") == 2 and CA.tunables_active({"GLIBC_TUNABLES": out.split("TUNABLES ")[1].strip()})
    for off in ({"JAXSHAPE_CPU_MALLOC": "0", "JAX_PLATFORMS": "cpu"}, {"JAX_PLATFORMS": "cuda"}):
        out = _run(code, **off)
        assert out.count("start") == 1 and "TUNABLES None" in out


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc tunables exist on glibc Linux only")
def test_tunables_serve_large_blocks_from_the_heap_and_keep_them_after_free():
    """The mechanism, deterministically (glibc's own counters, ``mallinfo2``): a 100 MiB ``malloc`` — the size of an
    XLA:CPU temporary — is a fresh ``mmap`` with glibc's defaults (unmapped again by ``free``, so the next one is
    page-faulted in anew); with the tunables it comes from the heap and stays mapped after ``free``. (Whether the
    next block reuses that memory whole depends on the heap layout during the first few steps, so a fault count of
    a few calls is not a stable test.)"""
    code = MALLOC_100MIB + """
        print("INFO", during.hblkhd >> 20, during.arena >> 20, after.arena >> 20)
    """
    mmapped, heap, heap_after = (int(v) for v in _run(code, JAXSHAPE_CPU_MALLOC="0").split("INFO ")[1].split())
    assert mmapped >= 100 and heap < 100, (mmapped, heap)
    tun = _run(code, GLIBC_TUNABLES=CA.merged_tunables(None)).split("INFO ")[1].split()
    mmapped, heap, heap_after = (int(v) for v in tun)
    assert mmapped == 0 and heap >= 100 and heap_after >= 100, (mmapped, heap, heap_after)


@pytest.mark.skipif(not GLIBC_LINUX, reason="mallopt is glibc's")
def test_tune_applies_the_settings_by_mallopt_in_a_users_process():
    """Library mode: ``import jaxshape`` leaves glibc's defaults (a 100 MiB block is a fresh ``mmap``);
    ``cpu_allocator.tune()`` in a process started without the tunables gives the allocator their behaviour by
    ``mallopt`` (the block from the heap, kept after ``free``); with ``JAXSHAPE_CPU_MALLOC=0`` or an accelerator
    platform it does nothing."""
    code = """
        import jaxshape
        from jaxshape import cpu_allocator
        applied = cpu_allocator.tune() if {tune} else False
    """ + MALLOC_100MIB + """
        print("INFO", during.hblkhd >> 20, after.arena >> 20, applied, cpu_allocator.describe().split(" (")[0])
    """
    info = _run(code.replace("{tune}", "True"), JAX_PLATFORMS="cpu").split("INFO ")[1].split(maxsplit=3)
    assert int(info[0]) == 0 and int(info[1]) >= 100 and info[2] == "True" and "mallopt" in info[3], info
    cases = [({"JAX_PLATFORMS": "cpu"}, "False"), ({"JAXSHAPE_CPU_MALLOC": "0", "JAX_PLATFORMS": "cpu"}, "True"),
             ({"JAX_PLATFORMS": "cuda"}, "True")]
    for env, tune in cases:
        info = _run(code.replace("{tune}", tune), **env).split("INFO ")[1].split(maxsplit=3)
        assert int(info[0]) >= 100 and info[2] == "False" and "default glibc malloc" in info[3], (env, info)
