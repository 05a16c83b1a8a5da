"""Evaluation on held-out shapes: the split, the numbers logged during training (against independent
computations), and ``python -m jaxshape.evaluate`` on workdirs and on folders of meshes."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape import flow
from jaxshape.data.prepare import prepare
from jaxshape.data.procedural import CLASSES, embedded_jobs
from jaxshape.data.records import RecordSource, holdout_mask
from jaxshape.data.targets import TargetConfig
from jaxshape.eval import occupancy_to_points, pairwise_chamfer, shape_metrics
from jaxshape.eval.protocol import shape_surface_points
from jaxshape.evaluate import evaluate_meshes, evaluate_workdir, main, write_report
from jaxshape.geometry import occupancy_shapes, save_shapes
from jaxshape.models.store import read_train_params
from jaxshape.trainer.evaluation import REFERENCE_SEED_OFFSET, Evaluator, heldout_examples
from jaxshape.trainer.loop import run
from jaxshape.trainer.tasks import REFERENCE_POINTS, make_task
from tests.tiny_configs import tiny_config
from tests.trainer.conftest import one_device

EVAL = {"data.holdout": 0.25, "eval.every": 2, "eval.num_shapes": 4, "eval.num_samples": 4, "eval.points": 256,
        "eval.set_points": 128, "eval.num_queries": 256}


def test_holdout_mask_is_a_stable_hash_split():
    ids = [f"mesh_{i:05d}" for i in range(20000)]
    mask = holdout_mask(ids, 0.1)
    assert abs(mask.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(holdout_mask(ids[:500], 0.1), mask[:500])  # growing the set keeps each side
    np.testing.assert_array_equal(holdout_mask(ids[::-1], 0.1), mask[::-1])  # order-free
    assert not holdout_mask(ids, 0.0).any()
    with pytest.raises(ValueError, match="held-out fraction"):
        holdout_mask(ids, 1.0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Ten procedural shapes (one per class) with 16³ sparse-structure targets."""
    tmp = tmp_path_factory.mktemp("evalrec")
    out = str(tmp / "rec")
    prepare([], out, TargetConfig(targets=("sparse_structure",), resolution=16), workers=0, progress=False,
            jobs=embedded_jobs(10, root=str(tmp / "cache")), classes=list(CLASSES))
    return out


def test_record_splits_are_disjoint_and_cover_the_set(records):
    every, train, held = (RecordSource(records, split=s, holdout=0.3) for s in ("all", "train", "holdout"))
    assert sorted(train.ids + held.ids) == every.ids and not set(train.ids) & set(held.ids)
    assert held.ids == [i for i, h in zip(every.ids, holdout_mask(every.ids, 0.3)) if h] and held.ids
    with pytest.raises(ValueError, match="split must be"):
        RecordSource(records, split="test")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Tiny ss_vae + ss_flow runs with a held-out split and an evaluation every 2 steps."""
    root = tmp_path_factory.mktemp("evaluated")
    vae = run(tiny_config("ss_vae", **EVAL), root / "ss_vae", mesh=one_device())
    dirs = {"ss_vae": str(root / "ss_vae")}
    fl = run(tiny_config("ss_flow", dirs, **EVAL), root / "ss_flow", mesh=one_device())
    return {"vae": vae, "flow": fl, "dirs": {**dirs, "ss_flow": str(root / "ss_flow")}}


def _eval_rows(workdir):
    rows = [json.loads(x) for x in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


@pytest.mark.slow
def test_vae_evaluation_logged_and_equal_to_an_independent_computation(evaluated):
    """Steps 2 and 3 logged; the step-3 numbers equal IoU / Chamfer / F computed here from the EMA params."""
    wd = evaluated["dirs"]["ss_vae"]
    rows = _eval_rows(wd)
    assert [r["step"] for r in rows] == [2, 3]
    last = rows[-1]
    config = tiny_config("ss_vae", **EVAL)
    task = make_task(config)
    ex = heldout_examples(task, config, 4)
    params = read_train_params(Path(wd) / "checkpoints", step=3, ema=True)
    occ = jnp.asarray(ex["occupancy"], jnp.float32)
    logits = np.asarray(task.decoder.apply({"params": params["decoder"]},
                                           task.encoder.apply({"params": params["encoder"]}, occ)))[..., 0]
    pred, true = logits > 0, np.asarray(ex["occupancy"])[..., 0] > 0.5
    iou = np.where((pred | true).sum((1, 2, 3)) > 0,
                   (pred & true).sum((1, 2, 3)) / np.maximum((pred | true).sum((1, 2, 3)), 1), 1.0)
    np.testing.assert_allclose(last["eval/recon_iou"], iou.mean(), rtol=1e-6)
    shapes = occupancy_shapes(list(logits))
    ref = np.stack([occupancy_to_points(t, 256, seed=REFERENCE_SEED_OFFSET + i, bound=0.5)[0]
                    for i, t in enumerate(true)])
    keep = [i for i, s in enumerate(shapes) if len(s.faces)]
    from jaxshape.eval import sample_surface_points

    pts = np.stack([sample_surface_points(shapes[i].vertices, shapes[i].faces, 256, seed=i)[0] for i in keep])
    m = shape_metrics(pts, ref[keep])
    np.testing.assert_allclose(last["eval/recon_cd_l1"], float(np.mean(m["cd_l1"])), rtol=1e-5)
    np.testing.assert_allclose(last["eval/recon_f_0.1"], float(np.sum(m["f@0.1"])) / 4, rtol=1e-5)
    assert last["eval/recon_empty"] == 1 - len(keep) / 4


@pytest.mark.slow
def test_flow_bucket_losses_equal_the_interpolant_by_hand(evaluated):
    """``eval/mse_t0.5`` = the flow MSE at t = 0.5 with the evaluator's fixed noise, recomputed here; sample
    metrics at the last step only; evaluating twice gives identical numbers."""
    wd = evaluated["dirs"]["ss_flow"]
    rows = _eval_rows(wd)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval/sample_1nna_cd" not in rows[0] and 0.0 <= rows[1]["eval/sample_1nna_cd"] <= 1.0
    assert 0.0 <= rows[1]["eval/sample_class_consistency"] <= 1.0
    config = tiny_config("ss_flow", evaluated["dirs"], **EVAL)
    task = make_task(config)
    frozen = {**task.frozen_variables(), **task.load_frozen()}
    params = read_train_params(Path(wd) / "checkpoints", step=3, ema=True)
    ev = Evaluator(task, config)
    ex = ev.examples
    x0 = task.latents(frozen, {"occupancy": jnp.asarray(ex["occupancy"])})
    key = jax.random.key(config.eval.seed)
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, i), x0.shape[1:]) for i in range(len(x0))])
    cond = task.condition(params, frozen, {"class_label": jnp.asarray(ex["class_label"])}, key, drop=False)
    t = jnp.full((x0.shape[0],), 0.5)
    x_t, target = flow.trellis_noising(x0, noise, t, config.flow.sigma_min)
    mse = float(flow.mse(task.velocity(params, frozen, x_t, 1000.0 * t, cond), target))
    np.testing.assert_allclose(rows[1]["eval/mse_t0.5"], mse, rtol=1e-5)
    again, _ = ev(params, frozen, with_samples=True)
    for k, v in rows[1].items():
        if k.startswith("eval/") and k != "eval/time_s":
            np.testing.assert_allclose(again[k], v, rtol=1e-6, err_msg=k)


@pytest.mark.slow
def test_evaluate_cli_writes_the_report(evaluated, tmp_path):
    out = tmp_path / "report"
    assert main(["--workdir", evaluated["dirs"]["ss_flow"], "--num", "4", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["stage"] == "ss_flow" and rep["step"] == 3 and set(rep["pictures"]) == {"samples", "curves"}
    assert 0.0 <= rep["metrics"]["sample_1nna_cd"] <= 1.0 and len(rep["nearest"]) == 4
    assert "| sample_mmd_cd |" in (out / "report.md").read_text()
    from PIL import Image

    assert Image.open(out / "curves.png").size[0] > 300 and Image.open(out / "samples.png").size[0] == 8 * 128


def test_evaluate_needs_a_reference_without_holdout(flow_dirs):
    with pytest.raises(ValueError, match="--reference"):
        evaluate_workdir(flow_dirs["ss_flow"], num=2)


def test_evaluate_meshes_of_the_references_themselves(records, tmp_path):
    """The reference shapes themselves, written as y-up .glb files with their class labels and read back (glTF
    y-up -> z-up): every nearest reference is the shape itself (class consistency 1, coverage 1), at a distance
    below a tenth of that to the nearest other shape (two independent surface draws of one shape)."""
    src = RecordSource(records)
    exs = [src[i] for i in range(len(src))]
    shapes = occupancy_shapes([e["occupancy"][..., 0] - 0.5 for e in exs])  # in the unit-cube frame already
    save_shapes(shapes, tmp_path / "m", [{"class_label": int(e["class_label"])} for e in exs])
    rep = evaluate_meshes(tmp_path / "m", records, num_reference=10, normalize="none")
    assert rep["family"] == "sparse_structure" and rep["nearest"] == list(range(10))
    assert rep["metrics"]["class_consistency"] == 1.0 and rep["metrics"]["cov_cd"] == 1.0
    # MMD is then the mean Chamfer between two independent surface draws of each shape (the sampling floor)
    refs = REFERENCE_POINTS["sparse_structure"]({"occupancy": np.stack([e["occupancy"] for e in exs])}, 512,
                                                    REFERENCE_SEED_OFFSET)
    own, _ = shape_surface_points(shapes, 512, bound=0.5, seed=0)
    d = np.asarray(pairwise_chamfer(own, refs), np.float64)
    np.testing.assert_allclose(rep["metrics"]["mmd_cd"], np.diag(d).mean(), rtol=1e-4)
    assert np.diag(d).mean() < 0.25 * np.where(np.eye(10, dtype=bool), np.inf, d).min(axis=1).mean()
    write_report(rep, tmp_path / "r")
    assert (tmp_path / "r" / "samples.png").is_file()
    with pytest.raises(FileNotFoundError, match="no mesh files"):
        evaluate_meshes(tmp_path / "empty_dir", records)
