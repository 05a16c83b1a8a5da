"""Test session setup (before jax initialises its backend): 8 simulated CPU devices, and one XLA compilation cache
for the session.

The cache is a fresh folder per session, shared with the subprocesses the CLI tests start (they inherit the
environment): the trainer tests compile the same tiny programs many times over (every run of a stage, the kill /
resume and multi-process tests), and a cache hit returns the same executable, so results are unchanged while most of
the suite's compile time goes.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxshape-tests-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng_np():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def gl():
    """``jaxshape.data.render`` with a working OpenGL context; the test is skipped without moderngl or EGL."""
    from jaxshape.data import render

    try:  # pytest.importorskip, but also for a broken install (e.g. glcontext missing) raising ImportError
        import moderngl  # noqa: F401
    except ImportError as e:
        pytest.skip(f"moderngl not importable ({e}); pip install -e \".[render]\"")
    try:
        render._gl_context()
    except RuntimeError as e:  # no system EGL / driver
        pytest.skip(str(e))
    return render


@pytest.fixture
def highest_matmul_precision():
    """fp32 matmuls at full precision (the parity and formulation tests compare to 1e-6)."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


def pytest_sessionfinish(session, exitstatus):
    """Remove this session's compilation cache (set above, unless the caller chose one)."""
    import shutil

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(cache).startswith("jaxshape-tests-xla-cache-"):
        shutil.rmtree(cache, ignore_errors=True)
