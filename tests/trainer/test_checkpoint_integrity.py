"""Checkpoint integrity: the checksums (host == device, any sharding, sensitive to one bit and to a swap) and the
checked restore (a bad newest step is moved aside and the one before is restored; a changed config is an error)."""
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxshape.data.iterators import ArrayIterator
from jaxshape.integrity import tree_checksums
from jaxshape.trainer.checkpoint import Checkpointer, CheckpointMismatch, NoGoodCheckpoint


def _tree(seed=0):
    r = np.random.default_rng(seed)
    return {"w": r.normal(size=(16, 12)).astype(np.float32),
            "h": r.normal(size=(8, 6)).astype(ml_dtypes.bfloat16),
            "n": r.integers(-5, 5, size=(7,)).astype(np.int32),
            "m": r.random(9) < 0.5, "b": r.integers(0, 255, size=(5,)).astype(np.uint8),
            "k": jax.random.key(seed), "s": np.float32(3.5)}


def _sums(tree, on_host):
    return [(r["path"], r["sum"], r["wsum"], r["nonfinite"]) for r in tree_checksums(tree, on_host=on_host)]


def test_checksums_agree_on_host_and_devices_for_any_sharding():
    tree = _tree()
    host = _sums(jax.device_put(tree), on_host=True)
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.device_put(tree, {k: NamedSharding(mesh, P("x") if k == "w" else P()) for k in tree})
    assert sharded["w"].sharding.spec == P("x")
    assert _sums(sharded, on_host=False) == host == _sums(sharded, on_host=True)
    # pinned against a hand computation of the definition: words summed, and weighted by 1-based position
    w = np.asarray(tree["w"]).view(np.uint32).ravel().astype(np.uint64)
    want = (int(w.sum() % 2 ** 32), int((w * np.arange(1, w.size + 1)).sum() % 2 ** 32))
    assert [(s, ws) for p, s, ws, _ in host if p == "w"] == [want]


def test_checksums_see_one_flipped_bit_and_a_swap():
    tree = _tree()
    base = dict((p, (s, ws)) for p, s, ws, _ in _sums(tree, True))
    for key in ("w", "h", "n", "b"):
        flipped = dict(tree)
        a = np.array(tree[key])
        a.view(np.uint8).reshape(-1)[3] ^= 0x04
        flipped[key] = a
        s, ws = dict((p, (s, ws)) for p, s, ws, _ in _sums(flipped, True))[key]
        assert s != base[key][0] and ws != base[key][1], key
    swapped = dict(tree)
    a = np.array(tree["w"]).ravel()
    a[[2, 9]] = a[[9, 2]]
    swapped["w"] = a.reshape(tree["w"].shape)
    s, ws = dict((p, (s, ws)) for p, s, ws, _ in _sums(swapped, True))["w"]
    assert s == base["w"][0] and ws != base["w"][1]
    nan = dict(tree, w=np.where(np.arange(tree["w"].size).reshape(tree["w"].shape) < 3, np.nan, tree["w"]))
    assert [n for p, *_, n in _sums(nan, True) if p == "w"] == [3]


def _save_steps(directory, steps, it=None):
    ckpt = Checkpointer(directory, every=1, keep_last=10, keep_best=0)
    states = {}
    for step in steps:
        state = jax.device_put({k: v for k, v in _tree(step).items()})
        if it is not None:
            next(it)
        ckpt.save(step, state, it)
        states[step] = jax.device_get(state)
    ckpt.close()
    return states


def _target(tree):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=one), tree)


def _equal(a, b):
    a = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, a)
    b = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, b)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _files(step_dir: Path):
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


def test_a_corrupt_newest_step_is_moved_aside_and_the_previous_one_restored(tmp_path, caplog):
    it = ArrayIterator({"x": np.arange(40.0)}, 4, seed=0)
    states = _save_steps(tmp_path, [1, 2], it)
    n_files = len(_files(tmp_path / "2"))
    biggest = max(_files(tmp_path / "2" / "state"), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    biggest.write_bytes(bytes(raw))
    it2 = ArrayIterator({"x": np.arange(40.0)}, 4, seed=0)
    ckpt = Checkpointer(tmp_path, every=1, keep_last=10, keep_best=0)
    with caplog.at_level("WARNING", logger="jaxshape.train"):
        step, state = ckpt.restore_newest(_target(states[1]), it2)
    assert step == 1 and _equal(state, states[1])
    assert it2.step == 1  # the data position of step 1, not of the bad step 2
    bad = [p.name for p in (tmp_path / "bad").iterdir()]
    assert len(bad) == 1 and bad[0].startswith("2-")
    assert len(_files(tmp_path / "bad" / bad[0])) == n_files  # nothing deleted
    lines = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(lines) == 1 and "checkpoint step 2" in lines[0] and "trying step 1" in lines[0]
    assert ckpt.latest_step() == 1
    ckpt.close()


def test_a_changed_data_iterator_state_is_caught(tmp_path):
    it = ArrayIterator({"x": np.arange(40.0)}, 4, seed=0)
    states = _save_steps(tmp_path, [1, 2], it)
    (data_file,) = [p for p in _files(tmp_path / "2" / "data") if "process" in p.name]
    data_file.write_text(data_file.read_text().replace('"step": 2', '"step": 7'))
    ckpt = Checkpointer(tmp_path, every=1, keep_last=10, keep_best=0)
    step, state = ckpt.restore_newest(_target(states[1]), ArrayIterator({"x": np.arange(40.0)}, 4, seed=0))
    assert step == 1
    assert [p.name for p in (tmp_path / "bad").iterdir()] == ["2-data-state"]
    ckpt.close()


def test_a_changed_config_is_an_error_and_no_good_step_is_an_error(tmp_path):
    states = _save_steps(tmp_path, [1, 2])
    other = dict(states[2], w=np.zeros((16, 13), np.float32))
    ckpt = Checkpointer(tmp_path, every=1, keep_last=10, keep_best=0)
    with pytest.raises(CheckpointMismatch, match=r"checkpoint step 2 .*another structure.*w"):
        ckpt.restore_newest(_target(other))
    assert not (tmp_path / "bad").exists()  # a config change moves nothing
    for step in (1, 2):
        os.remove(next(p for p in _files(tmp_path / str(step) / "state") if p.name == "manifest.ocdbt"))
    with pytest.raises(NoGoodCheckpoint, match=r"every step \(\[1, 2\]\) failed"):
        ckpt.restore_newest(_target(states[2]))
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["1-read-failed", "2-read-failed"]
    ckpt.close()


def test_read_train_params_skips_a_newest_step_that_reads_back_wrong(tmp_path, caplog):
    from jaxshape.models.store import read_train_params

    ckpt = Checkpointer(tmp_path, every=1, keep_last=10, keep_best=0)
    want = {}
    for step in (1, 2):
        r = np.random.default_rng(step)
        params = {"w": r.normal(size=(64, 64)).astype(np.float32), "b": r.normal(size=(64,)).astype(np.float32)}
        ckpt.save(step, jax.device_put({"params": params, "ema_params": jax.tree.map(lambda x: x * 2, params)}))
        want[step] = jax.tree.map(lambda x: x * 2, params)
    ckpt.close()
    # flip one bit in the middle of every data file of step 2 (values that still decode reach the checksums)
    for p in _files(tmp_path / "2" / "state" / "d"):
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        p.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="jaxshape.models"):
        step, got = read_train_params(tmp_path, return_step=True)
    assert step == 1 and _equal(got, want[1])
    lines = [r.getMessage() for r in caplog.records if "reading the step before" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("checkpoint step 2 in") and "its ema_params" in lines[0]
    assert (tmp_path / "2").exists()  # a reader moves nothing
    with pytest.raises(ValueError, match=r"checkpoint step 2 in .*: its ema_params (cannot be read|read back)"):
        read_train_params(tmp_path, step=2)
