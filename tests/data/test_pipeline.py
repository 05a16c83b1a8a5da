"""grain pipeline: batches for both trainers, sharding per process, augmentation, checkpoint/resume."""
import numpy as np
import pytest

from jaxshape.data.pipeline import AugmentConfig, DeviceIterator, make_dataset
from jaxshape.data.prepare import prepare
from jaxshape.data.procedural import embedded_jobs
from jaxshape.data.records import RecordSource
from jaxshape.data.targets import TargetConfig
from jaxshape.families import SPARSE_STRUCTURE, VECSET


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    jobs = embedded_jobs(12, root=str(tmp / "cache"))
    out = str(tmp / "rec")
    prepare([], out, TargetConfig.small(16, 256), workers=0, shard_size=5, progress=False, jobs=jobs,
            classes=None)
    return out


def _ids(b):
    return [str(x) for x in b["id"]]


def _device_iterator(root, batch, family, sharding, **kw):
    return DeviceIterator(make_dataset(root, batch, family, process_index=0, process_count=1, **kw), sharding)


def test_batches_both_families(data_dir):
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4,), ("data",))
    sh = NamedSharding(mesh, P("data"))
    it = _device_iterator(data_dir, 4, VECSET, sh, seed=0, num_queries=(32, 32, 16))
    b = next(it)
    assert b["pointcloud"].shape == (4, 256, 3) and b["query_points"].shape == (4, 80, 3)
    assert b["query_gt"].shape == (4, 80) and b["fps_indices"].shape[0] == 4
    assert isinstance(b["pointcloud"], jax.Array) and b["pointcloud"].sharding == sh
    assert b["class_label"].shape == (4,) and len(b["id"]) == 4
    it.close()
    it = _device_iterator(data_dir, 4, SPARSE_STRUCTURE, sh, seed=0)
    b = next(it)
    assert b["occupancy"].shape == (4, 16, 16, 16, 1) and b["occupancy"].dtype == np.float32
    it.close()


def test_process_sharding_disjoint_and_epochs(data_dir):
    seen = []
    for pi in range(2):
        ds = make_dataset(data_dir, 2, SPARSE_STRUCTURE, seed=0, num_epochs=1, process_index=pi, process_count=2,
                          drop_remainder=False)
        seen.append([i for b in ds for i in _ids(b)])
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 12
    ds = make_dataset(data_dir, 3, SPARSE_STRUCTURE, seed=0, num_epochs=2, process_index=0, process_count=1)
    ids = [i for b in ds for i in _ids(b)]
    assert len(ids) == 24 and sorted(ids[:12]) == sorted(ids[12:]) and ids[:12] != ids[12:]


def test_augmentation_is_isometry(data_dir):
    src = RecordSource(data_dir)
    ds = make_dataset(data_dir, 1, VECSET, seed=1, shuffle=False, process_index=0, process_count=1,
                      augment=AugmentConfig(mirror_p=1.0, rotate="so3"))
    b = next(iter(ds))
    ex = src[0]
    assert _ids(b) == [ex["id"]]
    r0 = np.linalg.norm(ex["query_points"], axis=1)
    np.testing.assert_allclose(np.linalg.norm(b["query_points"][0], axis=1), r0, atol=1e-5)
    np.testing.assert_array_equal(b["query_gt"][0], ex["query_gt"])
    assert not np.allclose(b["pointcloud"][0], ex["pointcloud"])
    d0 = np.linalg.norm(ex["pointcloud"][:, None] - ex["pointcloud"][None, :50], axis=-1)
    d1 = np.linalg.norm(b["pointcloud"][0][:, None] - b["pointcloud"][0][None, :50], axis=-1)
    np.testing.assert_allclose(d0, d1, atol=1e-5)  # FPS orders stay valid


def test_checkpoint_resume_exact_next_batch(data_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kw = dict(num_queries=(16, 16, 8), augment=AugmentConfig(0.75, "z"))
    it = _device_iterator(data_dir, 2, VECSET, None, seed=3, **kw)
    for _ in range(3):
        next(it)
    mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expect = [next(it) for _ in range(4)]  # crosses an epoch boundary (6 batches per epoch)
    it.close()
    it2 = _device_iterator(data_dir, 2, VECSET, None, seed=3, **kw)
    mgr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    for e in expect:
        g = next(it2)
        assert _ids(g) == _ids(e)
        np.testing.assert_array_equal(np.asarray(g["query_points"]), np.asarray(e["query_points"]))
        np.testing.assert_array_equal(np.asarray(g["pointcloud"]), np.asarray(e["pointcloud"]))
    state = it2.get_state()
    nxt = next(it2)
    it2.set_state(state)
    assert _ids(next(it2)) == _ids(nxt)
    it2.close()
    assert isinstance(it2, DeviceIterator)


def _with_bad_records(data_dir, out):
    """A copy of ``data_dir`` plus one shard of four bad records whose ids sort into the middle of the set: one
    that does not decode, NaN points, an empty point set, and a point cloud of another size."""
    import json
    import shutil

    from jaxshape.data.records import decode_example, encode_example, write_shard

    shutil.copytree(data_dir, out)
    good = RecordSource(data_dir)[0]
    nan = dict(good, id="procedural__m_nan")
    nan["pointcloud"] = np.where(np.arange(len(good["pointcloud"]))[:, None] == 5, np.nan, good["pointcloud"])
    empty = dict(good, id="procedural__m_empty", pointcloud=np.zeros((0, 3), np.float32))
    short = dict(good, id="procedural__m_short", pointcloud=good["pointcloud"][:100])
    records = [encode_example(nan), encode_example(empty), encode_example(short), b"\x93not a msgpack map"]
    assert decode_example(records[0])["id"] == "procedural__m_nan"
    write_shard(str(out / "shard-bad.array_record"), records)
    ids = ["procedural__m_nan", "procedural__m_empty", "procedural__m_short", "procedural__m_garbage"]
    with open(out / "shards.jsonl", "a") as fh:
        fh.write(json.dumps({"shard": "shard-bad.array_record", "ids": ids}) + "\n")
    return ids


def test_bad_examples_are_replaced_counted_and_logged(data_dir, tmp_path, caplog):
    bad = _with_bad_records(data_dir, tmp_path / "rec")
    good = RecordSource(data_dir).ids
    kw = dict(keys=("pointcloud", "id"), seed=0, shuffle=False, process_index=0, process_count=1)
    it = DeviceIterator(make_dataset(str(tmp_path / "rec"), 4, count_skipped=True, **kw), None)
    with caplog.at_level("WARNING", logger="jaxshape.data"):
        batches = [next(it) for _ in range(4)]  # one pass over the 16 indices, 12 of them good
    it.close()
    ids = [i for b in batches for i in _ids(b)]
    assert set(ids) == set(good) and len(ids) == 16
    nxt = min(i for i in good if i > max(bad))  # the four bad ones sort together: the next good one replaces each
    assert ids.count(nxt) == 5 and it.skipped == 4
    assert all(b["pointcloud"].shape == (4, 256, 3) and np.isfinite(b["pointcloud"]).all() for b in batches)
    assert all("_skipped" not in b for b in batches)
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped example")]
    assert len(messages) == 4
    for reason in ("procedural__m_nan: pointcloud holds 3 NaN/Inf values", "procedural__m_empty: pointcloud is empty",
                   "procedural__m_short: pointcloud shaped (100, 3) where the others are (256, 3)",
                   "procedural__m_garbage: record"):
        assert sum(reason in m for m in messages) == 1, reason
    assert "shard-bad.array_record#3 does not decode" in "\n".join(messages)
    # outside training (count_skipped=False) a bad example is an error naming it
    with pytest.raises(ValueError, match=r"example procedural__m_(nan|empty|short|garbage): "):
        list(make_dataset(str(tmp_path / "rec"), 4, num_epochs=1, **kw))
