"""python -m jaxshape.data.prepare: malformed corpus, resume after a kill, determinism, embedded set."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import trimesh

from jaxshape.data.prepare import prepare
from jaxshape.data.procedural import CLASSES, embedded_jobs, generate_shape
from jaxshape.data.records import RecordSource
from jaxshape.data.targets import TargetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--small", "--resolution", "16", "--points", "256", "--no-progress"]


def _run(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "jaxshape.data.prepare", *args], env=env, capture_output=True,
                          text=True, **kw)


def _manifest(out):
    with open(os.path.join(out, "manifest.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def _write(p, data):
    with open(p, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def _malformed_corpus(d):
    """>= 50 bad files of 12 kinds (+ 3 good ones); returns {filename: kind}."""
    rng = np.random.default_rng(0)
    kinds = {}
    good = trimesh.creation.box()
    for i in range(5):
        _write(d / f"empty_{i}.obj", b"")
        kinds[f"empty_{i}.obj"] = "empty_file"
        _write(d / f"garbage_{i}.{['ply', 'stl', 'glb', 'off', 'obj'][i]}", rng.bytes(2000))
        kinds[f"garbage_{i}.{['ply', 'stl', 'glb', 'off', 'obj'][i]}"] = "garbage"
        stl = good.export(file_type="stl")
        _write(d / f"truncated_{i}.stl", stl[: 84 + 10 * i + 5])
        kinds[f"truncated_{i}.stl"] = "truncated"
        vals = ["nan", "inf", "-inf", "NaN", "1e400"][i]
        _write(d / f"nan_{i}.obj", f"v 0 0 0\nv 1 0 0\nv {vals} 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
        kinds[f"nan_{i}.obj"] = "nonfinite"
        _write(d / f"points_{i}.obj", "".join(f"v {a} {b} {c}\n" for a, b, c in rng.random((10, 3))))
        kinds[f"points_{i}.obj"] = "no_faces"
        _write(d / f"zero_area_{i}.obj", "v 0 0 0\nv 1 1 1\nv 2 2 2\nv 3 3 3\nf 1 2 3\nf 2 3 4\nf 1 1 1\n")
        kinds[f"zero_area_{i}.obj"] = "zero_area"
        _write(d / f"badindex_{i}.off", f"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 {7 + i}\n")
        kinds[f"badindex_{i}.off"] = "bad_index"
        _write(d / f"text_{i}.ply", "this is not a mesh at all\n" * (i + 1))
        kinds[f"text_{i}.ply"] = "not_a_mesh"
        _write(d / f"header_only_{i}.ply", "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                           "property float y\nproperty float z\nend_header\n")
        kinds[f"header_only_{i}.ply"] = "header_only"
        big = trimesh.creation.icosphere(4)  # 5120 faces > --max-faces 4000
        big.vertices += i
        big.export(str(d / f"gigantic_{i}.ply"))
        kinds[f"gigantic_{i}.ply"] = "gigantic"
        _write(d / f"badjson_{i}.gltf", '{"asset": {"version": "2.0"}, "buffers": [{"uri": "missing.bin", '
                                        '"byteLength": 999}], "meshes": [' + "{" * i)
        kinds[f"badjson_{i}.gltf"] = "bad_gltf"
        _write(d / f"huge_coords_{i}.obj", "v 0 0 0\nv 1e30 0 0\nv 0 1 0\nf 1 2 3\n")
        kinds[f"huge_coords_{i}.obj"] = "huge_coords"
    for i in range(3):
        m = trimesh.creation.box((1 + i, 1, 1))
        m.export(str(d / f"good_{i}.obj"))
        kinds[f"good_{i}.obj"] = "good"
    return kinds


def test_malformed_corpus(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    kinds = _malformed_corpus(src)
    assert sum(k != "good" for k in kinds.values()) >= 50 and len(set(kinds.values())) >= 9
    out = str(tmp_path / "out")
    r = _run(["--input", str(src), "--output", out, "--workers", "2", "--max-faces", "4000", *TINY], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _manifest(out)
    assert len(rows) == len(kinds) == len({r["id"] for r in rows})
    by_file = {os.path.basename(r["source"]): r for r in rows}
    for fn, kind in kinds.items():
        row = by_file[fn]
        if kind == "good":
            assert row["status"] == "ok", row
        else:
            assert row["status"] == "error" and row["reason"], (fn, row)
    reasons = {kinds[fn]: by_file[fn]["reason"] for fn in kinds}
    assert reasons["empty_file"] == "empty_file" and reasons["gigantic"] == "too_large"
    assert reasons["nonfinite"] == "nonfinite_vertices" and reasons["zero_area"] == "zero_area"
    assert reasons["huge_coords"] == "coords_too_large"
    assert len(RecordSource(out)) == 3
    # all failed -> documented exit code 2, still one row each
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        _write(bad / f"e{i}.obj", b"")
    r = _run(["--input", str(bad), "--output", str(tmp_path / "out2"), "--workers", "1", *TINY], timeout=120)
    assert r.returncode == 2 and len(_manifest(str(tmp_path / "out2"))) == 3


def _corpus(d, n=10):
    d.mkdir(exist_ok=True)
    for i in range(n):
        v, f = generate_shape(i % len(CLASSES), i // len(CLASSES), seed=1)
        trimesh.Trimesh(v, f, process=False).export(str(d / f"s{i:02d}.ply"))
    return str(d)


def _records(out):
    src = RecordSource(out)
    return {i: src[k] for k, i in enumerate(src.ids)}


def test_resume_after_kill_and_determinism(tmp_path):
    src = _corpus(tmp_path / "meshes", 10)
    cfg = TargetConfig.small(16, 256)
    ref = str(tmp_path / "ref")
    s = prepare([src], ref, cfg, seed=5, workers=0, shard_size=3, progress=False)
    assert s["num_ok"] == 10 and len(s["shards"]) == 4
    # killed run: slow the worker down so the kill lands mid-job
    out = str(tmp_path / "killed")
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = [sys.executable, "-m", "jaxshape.data.prepare", "-i", src, "-o", out, "--seed", "5", "--workers", "1",
            "--shard-size", "3", *TINY]
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    mpath = os.path.join(out, "manifest.jsonl")
    t0 = time.time()
    while time.time() - t0 < 120:
        if os.path.exists(mpath) and len(open(mpath).readlines()) >= 4:
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(_manifest(out))
    assert 4 <= n_before < 10, n_before
    with open(mpath, "a") as fh:  # torn last line as a kill mid-write would leave
        fh.write('{"id": "s09_ply", "sta')
    r = _run(["-i", src, "-o", out, "--seed", "5", "--workers", "2", "--shard-size", "3", *TINY], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _manifest(out)
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    a, b = _records(ref), _records(out)
    assert sorted(a) == sorted(b)
    for k in a:
        for key in ("pointcloud", "fps_indices", "pointcloud_dorases", "query_points", "query_gt", "occupancy"):
            np.testing.assert_array_equal(a[k][key], b[k][key])
    # re-running a finished job is a no-op
    r = _run(["-i", src, "-o", out, "--seed", "5", "--workers", "1", "--shard-size", "3", *TINY], timeout=120)
    assert r.returncode == 0 and len(_manifest(out)) == 10 and len(RecordSource(out)) == 10
    # a different seed into the same folder is refused
    r = _run(["-i", src, "-o", out, "--seed", "6", *TINY], timeout=120)
    assert r.returncode != 0


def test_embedded_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHAPE_CACHE", str(tmp_path / "cache"))
    jobs = embedded_jobs(30)
    assert len(jobs) == 30 and {j[2] for j in jobs} == set(range(len(CLASSES)))
    assert embedded_jobs(30) == jobs  # cached, same paths
    v1, f1 = generate_shape(6, 3, 0)
    v2, f2 = generate_shape(6, 3, 0)
    np.testing.assert_array_equal(v1, v2)
    out = str(tmp_path / "emb")
    r = _run(["--embedded", "20", "-o", out, "--workers", "2", *TINY], {"JAXSHAPE_CACHE": str(tmp_path / "cache")},
             timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    src = RecordSource(out)
    assert len(src) == 20
    ex = src[0]
    assert ex["occupancy"].shape == (16, 16, 16, 1) and 0 <= int(ex["class_label"]) < len(CLASSES)
    with open(os.path.join(out, "dataset.json")) as fh:
        assert json.load(fh)["classes"] == list(CLASSES)
    assert all(r["stats"]["watertight"] for r in _manifest(out))


def test_features_carried(tmp_path):
    src = _corpus(tmp_path / "m", 2)
    fd = tmp_path / "feat"
    fd.mkdir()
    np.save(fd / "s00.npy", np.arange(8, dtype=np.float32))
    out = str(tmp_path / "o")
    prepare([src], out, TargetConfig.small(16, 256), workers=0, progress=False, features_dir=str(fd))
    recs = _records(out)
    np.testing.assert_array_equal(recs["s00_ply"]["cond_features"], np.arange(8))
    assert "cond_features" not in recs["s01_ply"]
