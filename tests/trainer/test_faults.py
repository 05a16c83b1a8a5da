"""Fault injection (marker ``faults``; ``python -m pytest -q -m faults``): what pods do to a training run.

Every fault must end in a run that resumes from the last good state (bit for bit the uninterrupted run) or in a
clear error naming the file and the rule, with no checkpoint lost or overwritten. The outcome table is in
docs/training.md ("When a pod misbehaves")."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxshape.data.synthetic import SyntheticIterator
from jaxshape.trainer.checkpoint import Checkpointer
from jaxshape.trainer.loop import run
from jaxshape.trainer.sharding import make_mesh
from tests.tiny_configs import tiny_config
from tests.utils import REPO

pytestmark = pytest.mark.faults

CONFIG = f"--config={REPO}/tests/tiny_configs.py:ss_vae"


def _env(**extra):
    return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **extra}


def _cmd(workdir, steps, *extra):
    return [sys.executable, "-m", "jaxshape.train", CONFIG, f"--workdir={workdir}", f"--config.steps={steps}",
            "--config.keep_best=0", *extra]


def _cli(workdir, steps, *extra, check=True, env=None):
    proc = subprocess.run(_cmd(workdir, steps, *extra), cwd=REPO, env=env or _env(), capture_output=True,
                          text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(workdir):
    """The loss of every step, the last logged value when a step was trained twice (after a fall-back)."""
    rows = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _steps(workdir):
    return sorted(int(p.name) for p in Path(workdir, "checkpoints").iterdir() if p.name.isdigit())


def _bad(workdir):
    bad = Path(workdir, "checkpoints", "bad")
    return sorted(p.name for p in bad.iterdir()) if bad.exists() else []


def _params(workdir):
    from jaxshape.models.store import read_train_params

    return jax.tree.leaves(read_train_params(Path(workdir, "checkpoints")))


def _same_params(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_params(a), _params(b)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference runs: 9 steps (checkpoints every 3) and 120 steps (every 10)."""
    root = tmp_path_factory.mktemp("straight")
    _cli(root / "s9", 9, "--config.ckpt_every=3")
    _cli(root / "s120", 120, "--config.ckpt_every=10", "--config.keep_last=100")
    return root


# ---- every file of a step: truncated, bit-flipped, deleted ----------------------------------------------------

def _iterator():
    return SyntheticIterator(8, num_examples=16, fields={"occupancy"}, resolution=8)


def _fault(path: Path, kind: str):
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "bit-flipped":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0x10
        path.write_bytes(bytes(b))
    else:
        path.unlink()


def _tree_equal(a, b):
    def host(x):
        return np.asarray(jax.random.key_data(x) if jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return all(np.array_equal(host(x), host(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_file_of_the_newest_step_truncated_flipped_or_deleted(tmp_path):
    """Each file of step 6 in turn, each fault: the restore gives step 6 exactly as written, or step 3 exactly as
    written with step 6 moved to checkpoints/bad; never another state, never an error."""
    cfg = tiny_config("ss_vae", steps=6, ckpt_every=3, keep_best=0)
    one = make_mesh(1, 1, jax.devices()[:1])
    pristine = tmp_path / "pristine"
    result = run(cfg, pristine, data_iter=_iterator(), mesh=one)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), result["state"])
    truth = {}
    for step in (3, 6):
        it = _iterator()
        ckpt = Checkpointer(pristine / "checkpoints", every=3, keep_best=0)
        truth[step] = (jax.device_get(ckpt.restore(step, target, it)), it.get_state())
        ckpt.close()
    files = sorted(p.relative_to(pristine / "checkpoints" / "6") for p in (pristine / "checkpoints" / "6").rglob("*")
                   if p.is_file())
    assert len(files) >= 15
    outcomes = {}
    for rel in files:
        for kind in ("truncated", "bit-flipped", "deleted"):
            if kind != "deleted" and (pristine / "checkpoints" / "6" / rel).stat().st_size == 0:
                continue
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine / "checkpoints", work)
            _fault(work / "6" / rel, kind)
            it = _iterator()
            ckpt = Checkpointer(work, every=3, keep_best=0)
            step, state = ckpt.restore_newest(target, it)
            ckpt.close()
            bad = sorted(p.name for p in (work / "bad").iterdir()) if (work / "bad").exists() else []
            assert step in (3, 6), (rel, kind, step)
            want_state, want_data = truth[step]
            assert _tree_equal(jax.device_get(state), want_state), (rel, kind, step)
            assert it.get_state() == want_data, (rel, kind, step)
            if step == 3:
                assert len(bad) == 1 and bad[0].startswith("6-"), (rel, kind, bad)
                assert not (work / "6").exists()
            else:
                assert bad == []
            outcomes[(str(rel), kind)] = "step 6 read intact" if step == 6 else f"fell back to 3 ({bad[0][2:]})"
    table = {}
    for (rel, kind), outcome in outcomes.items():
        table.setdefault(outcome, []).append(f"{kind} {rel}")
    print("\n" + "\n".join(f"{o}: {len(v)}" for o, v in sorted(table.items())))
    for o, v in sorted(table.items()):
        print(f"## {o}\n  " + "\n  ".join(v))
    assert any(o.startswith("fell back") for o in table) and len(outcomes) >= 40


def test_a_corrupt_newest_step_through_the_cli_resumes_from_the_one_before(straight, tmp_path):
    shutil.copytree(straight / "s9", tmp_path / "w")
    files = [p for p in (tmp_path / "w" / "checkpoints" / "9" / "state").rglob("*") if p.is_file()]
    _fault(max(files, key=lambda p: p.stat().st_size), "truncated")
    proc = _cli(tmp_path / "w", 9, "--config.ckpt_every=3")
    assert "checkpoint step 9 is unusable (read failed" in proc.stderr and "trying step 6" in proc.stderr
    assert "resumed from step 6" in proc.stderr
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
    assert _bad(tmp_path / "w") == ["9-read-failed"] and _steps(tmp_path / "w") == [6, 9]
    assert _losses(tmp_path / "w") == _losses(straight / "s9")
    assert _same_params(tmp_path / "w", straight / "s9")


def test_no_good_checkpoint_is_a_clear_error_and_nothing_is_deleted(straight, tmp_path):
    shutil.copytree(straight / "s9", tmp_path / "w")
    for step in (6, 9):
        (tmp_path / "w" / "checkpoints" / str(step) / "state" / "manifest.ocdbt").unlink()
    proc = _cli(tmp_path / "w", 9, "--config.ckpt_every=3", check=False)
    assert proc.returncode == 1
    assert "error: no usable checkpoint in" in proc.stderr and "every step ([6, 9]) failed" in proc.stderr
    assert _bad(tmp_path / "w") == ["6-read-failed", "9-read-failed"]


# ---- signals ---------------------------------------------------------------------------------------------------

def _start(workdir, steps, *extra):
    return subprocess.Popen(_cmd(workdir, steps, *extra), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc, timeout=300.0):
    t = time.time()
    while not cond():
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.time() - t < timeout
        time.sleep(0.002)


def _logged_steps(workdir):
    p = Path(workdir, "metrics.jsonl")
    return len(p.read_text().splitlines()) if p.exists() else 0


def _saving(workdir):
    d = Path(workdir, "checkpoints")
    return d.exists() and any("tmp" in p.name for p in d.iterdir())


@pytest.mark.parametrize("sig, when", [(signal.SIGTERM, "setup"), (signal.SIGTERM, "steps"),
                                       (signal.SIGTERM, "async save"), (signal.SIGINT, "steps")])
def test_a_signal_checkpoints_and_stops_and_the_rerun_is_bit_exact(straight, tmp_path, sig, when):
    w = tmp_path / "w"
    extra = ("--config.ckpt_every=10", "--config.log_every=1")
    proc = _start(w, 120, *extra)
    if when == "setup":
        _wait_for(lambda: Path(w, "config.json").exists(), proc)
    elif when == "steps":
        _wait_for(lambda: _logged_steps(w) >= 23, proc)
    else:
        _wait_for(lambda: _logged_steps(w) >= 11 and _saving(w), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = int(out.split("stopped by a signal at step ")[1].split()[0])
    assert "(checkpointed); run the same command again" in out
    assert stopped < 120
    if stopped:
        assert _steps(w)[-1] == stopped  # the checkpoint of the step it stopped at ...
    assert all(s % 10 == 0 or s == stopped for s in _steps(w))  # ... beside the interval ones
    assert _bad(w) == []
    _cli(w, 120, *extra)
    assert _losses(w) == _losses(straight / "s120")
    assert _same_params(w, straight / "s120")


def test_kill_9_during_an_async_save_resumes_from_the_last_finished_step(straight, tmp_path):
    w = tmp_path / "w"
    extra = ("--config.ckpt_every=10", "--config.log_every=1")
    proc = _start(w, 120, *extra)
    _wait_for(lambda: _logged_steps(w) >= 21 and _saving(w), proc)
    proc.kill()
    proc.communicate(timeout=60)
    finished = _steps(w)
    proc = _cli(w, 120, *extra)
    assert f"resumed from step {finished[-1]}" in proc.stderr if finished else "resumed" not in proc.stderr
    assert _losses(w) == _losses(straight / "s120")
    assert _same_params(w, straight / "s120")


# ---- multi-host: two processes on loopback ---------------------------------------------------------------------

def _two_processes(workdir, steps, *extra, signal_when=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
        procs.append(subprocess.Popen(_cmd(workdir, steps, "--config.distributed=True", "--config.mesh.fsdp=2",
                                           *extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    if signal_when is not None:
        _wait_for(lambda: signal_when(workdir), procs[0])
        procs[1].send_signal(signal.SIGTERM)  # one host is preempted; both must stop at one step
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        outs.append((out, err))
    return outs


def test_two_processes_preempted_then_a_corrupt_newest_step(tmp_path):
    extra = ("--config.ckpt_every=10", "--config.log_every=1")
    _two_processes(tmp_path / "ref", 60, *extra)
    outs = _two_processes(tmp_path / "w", 60, *extra, signal_when=lambda w: _logged_steps(w) >= 15)
    stops = {int(out.split("stopped by a signal at step ")[1].split()[0]) for out, _ in outs}
    assert len(stops) == 1  # both processes stopped at the same step
    (stopped,) = stops
    assert _steps(tmp_path / "w")[-1] == stopped < 60
    # the merged data files (the per-process OCDBT folders are not read back: test_every_file_...)
    files = [p for p in (tmp_path / "w" / "checkpoints" / str(stopped) / "state" / "d").iterdir()]
    _fault(max(files, key=lambda p: p.stat().st_size), "bit-flipped")
    outs = _two_processes(tmp_path / "w", 60, *extra)
    assert all(f"checkpoint step {stopped} is unusable" in err for _, err in outs), [e[-2000:] for _, e in outs]
    assert len(_bad(tmp_path / "w")) == 1
    assert _losses(tmp_path / "w") == _losses(tmp_path / "ref")
    assert _same_params(tmp_path / "w", tmp_path / "ref")


# ---- the disk fills up -----------------------------------------------------------------------------------------

def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {tmp_path}"],
                           capture_output=True)
    return probe.returncode == 0


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_full_disk_is_a_clear_error_and_earlier_checkpoints_are_intact(straight, tmp_path):
    """The workdir on a tmpfs (in a private mount namespace) that holds two and a half checkpoints: the run ends
    with one error line naming the step, the folder and ENOSPC; the steps written before read back as the
    uninterrupted run wrote them, and a re-run on a disk with room resumes from the newest one, bit for bit."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("no private mount namespace here (unshare -rm + mount tmpfs)")
    ref = straight / "s120"
    size = _du(ref) - _du(ref / "checkpoints") + int(2.5 * _du(ref / "checkpoints" / "10"))
    w, out = mnt / "w", tmp_path / "copy"
    extra = ("--config.ckpt_every=10", "--config.keep_last=100")
    cmd = " ".join(f"'{a}'" for a in _cmd(w, 120, *extra))
    script = f"mount -t tmpfs -o size={size // 1024}k none {mnt} && {cmd}; rc=$?; cp -a {w} {out}; exit $rc"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: writing checkpoint step ") and "No space left on device" in last, last
    assert f"under {w}/checkpoints failed" in last and "the checkpoints written before it are intact" in last
    failed = int(last.split("writing checkpoint step ")[1].split()[0])
    kept = _steps(out)
    assert kept and max(kept) < failed and all(s % 10 == 0 for s in kept)
    from jaxshape.models.store import read_train_params

    for step in kept:
        a = jax.tree.leaves(read_train_params(out / "checkpoints", step=step))
        b = jax.tree.leaves(read_train_params(ref / "checkpoints", step=step))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), step
    proc = _cli(out, 120, *extra)
    assert f"resumed from step {max(kept)}" in proc.stderr
    assert _losses(out) == _losses(ref) and _same_params(out, ref)


# ---- bad data mid-run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records_with_bad_ones(tmp_path_factory):
    import msgpack

    from jaxshape.data.prepare import prepare
    from jaxshape.data.procedural import CLASSES, embedded_jobs
    from jaxshape.data.records import RecordSource, encode_example, write_shard
    from jaxshape.data.targets import TargetConfig

    out = tmp_path_factory.mktemp("records")
    prepare([], str(out), TargetConfig.small(8, 128), seed=0, workers=0, progress=False,
            jobs=embedded_jobs(16, root=str(tmp_path_factory.mktemp("shapes"))), classes=list(CLASSES))
    good = RecordSource(str(out))[0]
    broken = dict(good, id="procedural__m_broken", voxel_indices=np.full((4, 3), 99, np.uint8))
    broken = encode_example({k: v for k, v in broken.items() if k != "occupancy"})
    write_shard(str(out / "shard-bad.array_record"), [b"\x00garbage", msgpack.packb(1), broken])
    with open(out / "shards.jsonl", "a") as fh:
        fh.write(json.dumps({"shard": "shard-bad.array_record",
                             "ids": ["procedural__m_a", "procedural__m_b", "procedural__m_broken"]}) + "\n")
    return out


def test_bad_records_mid_epoch_are_skipped_counted_and_the_limit_stops_the_run(records_with_bad_ones, tmp_path):
    data = ("--config.data.source=records", f"--config.data.path={records_with_bad_ones}",
            "--config.data.batch_size=4")
    proc = _cli(tmp_path / "ok", 12, *data, "--config.ckpt_every=6", "--config.data.skip_limit=0.5")
    assert proc.stderr.count("skipped example procedural__m_") >= 3
    rows = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and all(np.isfinite(r["loss"]) for r in rows)
    skipped = [r["data/skipped"] for r in rows]
    assert skipped == sorted(skipped) and skipped[-1] >= 3  # 3 bad of 19 records per epoch, 48 examples read
    proc = _cli(tmp_path / "limit", 12, *data, "--config.data.skip_limit=0.01", "--config.data.skip_limit_min=2",
                check=False)
    assert proc.returncode != 0
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "were bad (more than data.skip_limit = 0.01)" in last, last
    assert _bad(tmp_path / "limit") == []
