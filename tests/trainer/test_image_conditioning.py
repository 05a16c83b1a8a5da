"""cond.kind = "image": views attached by prepare, drawn and preprocessed by the data pipeline, read by the frozen
image encoder inside the train step (stop_gradient, never optimised), CFG dropout, k views per example."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape.data.pipeline import ViewConfig, draw_views, make_dataset
from jaxshape.data.prepare import prepare
from jaxshape.data.procedural import CLASSES, embedded_jobs
from jaxshape.data.targets import TargetConfig
from jaxshape.families import SPARSE_STRUCTURE
from jaxshape.image import encode_png
from jaxshape.trainer.loop import run
from jaxshape.trainer.tasks import make_task
from jaxshape.trainer.tasks.base import encode_images
from tests.tiny_configs import tiny_config
from tests.trainer.conftest import one_device

NUM = 8


def _view(label: int, k: int, size: int = 40) -> np.ndarray:
    """An RGBA view: a disc whose radius depends on the class and colour on the view index, transparent elsewhere."""
    yy, xx = np.mgrid[:size, :size]
    r = 6 + 2 * (label % 5)
    inside = (yy - size / 2 + k) ** 2 + (xx - size / 2) ** 2 <= r * r
    img = np.zeros((size, size, 4), np.uint8)
    img[inside] = (40 * (k + 1), 200 - 20 * label, 90, 255)
    return img


@pytest.fixture(scope="module")
def view_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    jobs = embedded_jobs(NUM + 1)
    views = root / "views"
    for mid, _, label in jobs[:NUM]:  # the last mesh has no views: reported, the job carries on
        (views / mid).mkdir(parents=True)
        for k in range(3):
            (views / mid / f"{k:03d}.png").write_bytes(encode_png(_view(label, k)))
    out = root / "records"
    cfg = TargetConfig(targets=(SPARSE_STRUCTURE,), resolution=8, vecset=TargetConfig.small(8, 256).vecset)
    summary = prepare([], str(out), cfg, workers=0, progress=False, jobs=jobs, classes=list(CLASSES),
                      views_dir=str(views))
    assert summary["num_ok"] == NUM and summary["num_error"] == 1
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows if r["status"] == "error"] == ["missing_views"]
    return str(out)


def _config(records, vae_dirs, **over):
    return tiny_config("ss_flow", vae_dirs, **{
        "data.source": "records", "data.path": records, "data.batch_size": 4, "cond.kind": "image",
        "cond.encoder": "dinov2_tiny", "cond.image_size": 28, "model.cond_channels": 96, **over})


def _batch(records, views=1, n=4):
    ds = make_dataset(records, n, family=SPARSE_STRUCTURE, keys=("occupancy", "cond_image"), seed=0,
                      views=ViewConfig(count=views, size=28))
    return {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}


def test_views_are_drawn_and_preprocessed(view_records):
    from jaxshape.data.records import RecordSource
    from jaxshape.image import decode_png, trellis_preprocess

    ex = RecordSource(view_records)[0]
    assert len(ex["cond_views"]) == 3
    np.testing.assert_array_equal(decode_png(ex["cond_views"][1]), _view(int(ex["class_label"]), 1))
    rng = np.random.default_rng(3)
    img = draw_views(ex, ViewConfig(count=2, size=28), rng)
    assert img.shape == (2, 28, 28, 3) and img.dtype == np.float32
    picked = np.random.default_rng(3).choice(3, size=2, replace=False)
    for j, i in enumerate(picked):  # distinct views, TRELLIS's rule applied to each
        ref = trellis_preprocess(decode_png(ex["cond_views"][int(i)]), size=28).astype(np.float32) / 255
        np.testing.assert_array_equal(img[j], ref)
    assert float(img[0, 0, 0].max()) == 0.0  # black background (premultiplied)
    batch = _batch(view_records)
    assert batch["cond_image"].shape == (4, 1, 28, 28, 3) and "cond_views" not in batch
    with pytest.raises(ValueError, match="has no views"):
        draw_views({"id": "m"}, ViewConfig(), rng)


@pytest.mark.slow
def test_encoder_is_frozen_and_the_loss_equals_the_cached_features_path(view_records, vae_dirs):
    task = make_task(_config(view_records, vae_dirs))
    frozen = {**task.frozen_variables(), **task.load_frozen()}
    batch = _batch(view_records)
    params = task.init(jax.random.key(0), batch, frozen)
    assert set(params) == {"model"}  # the encoder is not a trainable parameter: never in the optimiser
    rng = jax.random.key(7)
    loss, _ = task.loss(params, frozen, batch, rng)
    g_frozen = jax.grad(lambda f: task.loss(params, f, batch, rng)[0])(frozen)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_frozen["encoder"]))
    # the same batch with the encoder's tokens precomputed (the --features-dir path)
    tokens = encode_images(task.encoder, frozen["encoder"], batch["cond_image"], "prenorm_ln")
    assert tokens.shape == (4, 1 + 4 + 4, 96)
    cached = make_task(_config(view_records, vae_dirs, **{"cond.kind": "features"}))
    frozen_c = {**cached.frozen_variables(), **cached.load_frozen()}
    loss_c, _ = cached.loss(params, frozen_c, {"occupancy": batch["occupancy"], "cond_features": tokens}, rng)
    assert abs(float(loss) - float(loss_c)) <= 1e-6


def test_k_views_repeat_the_latent_example_major_and_dropout_rate(view_records, vae_dirs):
    task = make_task(_config(view_records, vae_dirs, **{"cond.views": 2, "pre_encode": True}))
    frozen = {**task.frozen_variables(), **task.load_frozen()}
    batch = _batch(view_records, views=2)
    latent = jax.random.normal(jax.random.key(1), (4, 4, 4, 4, 4))  # pre-encoded [B, 4³, 4] latents
    img_batch = {"latent": latent, "cond_image": batch["cond_image"]}
    params = task.init(jax.random.key(0), img_batch, frozen)
    rng = jax.random.key(5)
    loss, _ = task.loss(params, frozen, img_batch, rng)
    tokens = encode_images(task.encoder, frozen["encoder"], batch["cond_image"], "prenorm_ln")  # [8, T, C]
    cached = make_task(_config(view_records, vae_dirs, **{"cond.kind": "features", "pre_encode": True}))
    frozen_c = {**cached.frozen_variables(), **cached.load_frozen()}
    repeated = {"latent": np.repeat(np.asarray(latent), 2, axis=0), "cond_features": tokens}  # repeat_interleave
    loss_c, _ = cached.loss(params, frozen_c, repeated, rng)
    assert abs(float(loss) - float(loss_c)) <= 1e-6
    # CFG dropout: zero condition tokens (after the LayerNorm) at rate cond.p_uncond
    many = {"cond_image": jnp.tile(batch["cond_image"][:, :1], (100, 1, 1, 1, 1))}  # 400 examples
    cond = task.condition(params, frozen, many, jax.random.key(11), drop=True)
    dropped = float(jnp.mean(jnp.all(cond == 0, axis=(1, 2))))
    assert 0.06 <= dropped <= 0.14  # p_uncond 0.1 over 400 draws (±2.7 sd)


def test_pooled_standardised_condition_statistics(view_records, vae_dirs, tmp_path):
    """cond.pool="cls_mean" gives [CLS, mean patch]; cond.standardize subtracts the mean and divides by the std of
    each (token, channel) over the first cond.stats_examples training examples' views (numpy reference), kept in
    the workdir and read back; the null condition is zeros after it."""
    from jaxshape.data.sources import make_data_iterator

    config = _config(view_records, vae_dirs, **{"cond.pool": "cls_mean", "cond.standardize": True,
                                                "cond.stats_examples": 6, "cond.views": 2})
    task = make_task(config)
    frozen = {**task.frozen_variables(), **task.load_frozen()}
    with pytest.raises(FileNotFoundError, match="cond_stats.npz is missing"):
        task.workdir_frozen(frozen, tmp_path, compute=False)
    stats = task.workdir_frozen(frozen, tmp_path, compute=True)["cond_stats"]
    it = make_data_iterator(config.data, ("cond_image",), task.family, process_index=0, process_count=1,
                            one_epoch=True, views=task.view_config())
    images = np.concatenate([b["cond_image"] for b in it])[:6]  # [6, 2, S, S, 3]: the same draw
    tokens = np.asarray(encode_images(task.encoder, frozen["encoder"], jnp.asarray(images), "prenorm_ln"), np.float64)
    assert task.encoder.num_register_tokens == 4 and tokens.shape[1] == 1 + 4 + 4  # CLS, registers, patches
    pooled = np.stack([tokens[:, 0], tokens[:, 5:].mean(axis=1)], axis=1)
    assert stats["mean"].shape == stats["std"].shape == (2, 96)
    np.testing.assert_allclose(np.asarray(stats["mean"]), pooled.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["std"]), np.sqrt(pooled.var(0) + 1e-6), rtol=1e-4, atol=1e-6)
    again = task.workdir_frozen(frozen, tmp_path, compute=False)["cond_stats"]  # read back from the workdir
    np.testing.assert_array_equal(np.asarray(again["mean"]), np.asarray(stats["mean"]))
    frozen["cond_stats"] = again
    cond = task.condition({}, frozen, {"cond_image": jnp.asarray(images)}, jax.random.key(0), drop=False)
    np.testing.assert_allclose(np.asarray(cond).reshape(6, 2, 2, 96),
                               ((pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-6)).reshape(6, 2, 2, 96),
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(cond).mean(0), 0.0, atol=1e-4)  # standardised over these 12 views
    other = make_task(_config(view_records, vae_dirs, **{"cond.standardize": True}))  # all tokens, not pooled
    with pytest.raises(ValueError, match="statistics .* are for condition tokens"):
        other.condition({}, frozen, {"cond_image": jnp.asarray(images)}, jax.random.key(0), drop=False)
    with pytest.raises(ValueError, match="needs cond.kind='image'"):
        make_task(_config(view_records, vae_dirs, **{"cond.kind": "features", "cond.pool": "cls_mean"}))
    with pytest.raises(ValueError, match="cond.pool must be one of"):
        make_task(_config(view_records, vae_dirs, **{"cond.pool": "mean"}))


@pytest.mark.slow
@pytest.mark.parametrize("standardize", [False, True])
def test_image_conditioned_stage_trains_and_samples(view_records, vae_dirs, tmp_path, standardize):
    over = {"cond.pool": "cls_mean", "cond.standardize": True} if standardize else {}
    config = _config(view_records, vae_dirs, **{"sample_at_end": True, "num_samples": 2, **over})
    run(config, tmp_path / "wd", mesh=one_device())
    assert (tmp_path / "wd" / "cond_stats.npz").is_file() == standardize
    rows = [json.loads(line) for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert len(list((tmp_path / "wd" / "samples").rglob("*.glb"))) == 2
    # python -m jaxshape.evaluate: the condition report (own shape vs the others vs shuffled conditions)
    from PIL import Image

    from jaxshape.evaluate import evaluate_workdir, write_report

    report = evaluate_workdir(tmp_path / "wd", reference=view_records, num=4)
    m = report["metrics"]
    for k in ("cd_matched", "cd_other", "cd_shuffled", "retrieval", "f_matched", "f_other", "f_shuffled"):
        assert np.isfinite(m[f"sample_cond_{k}"]), k
    np.testing.assert_allclose(m["sample_cond_ratio_other"], m["sample_cond_cd_matched"] / m["sample_cond_cd_other"])
    np.testing.assert_allclose(m["sample_cond_ratio_shuffled"],
                               m["sample_cond_cd_matched"] / m["sample_cond_cd_shuffled"])
    assert report["_cond_images"].shape == (4, 28, 28, 3)
    out = write_report(report, tmp_path / "report")
    assert Image.open(out / "samples.png").size == (3 * 4 * 128, 128 + 14)  # view | sample | its shape, 4 times
    with pytest.raises(ValueError, match="cond_channels=32"):
        make_task(_config(view_records, vae_dirs, **{"model.cond_channels": 32})).load_frozen()


@pytest.mark.slow
def test_eight_devices_match_one_device_with_the_encoder_sharded(view_records, vae_dirs, tmp_path):
    from jax.sharding import PartitionSpec as P

    from jaxshape.trainer.sharding import make_mesh, shardings_from_boxed

    config = _config(view_records, vae_dirs, **{"data.batch_size": 8})
    one = run(config, tmp_path / "one", mesh=one_device())
    eight = run(config, tmp_path / "eight", mesh=make_mesh(2, 4))
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    # parameters: Adam normalises every coordinate, so the fp32 reduction-order noise of near-zero gradients (the
    # zero-initialised layers) moves a few coordinates by up to ~lr·1e-2 differently; 3 steps at lr 3e-3
    for a, b in zip(jax.tree.leaves(eight["state"].params), jax.tree.leaves(one["state"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
    shardings = shardings_from_boxed(make_task(config).sharded_frozen()["encoder"], make_mesh(2, 4))
    assert shardings["params"]["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", None)


def test_encoder_checkpoint_reads_hub_and_hf_files(tmp_path):
    """cond.encoder_checkpoint: an HF folder (its config gives interpolation rule "antialias"/"size", ignored in
    favour of cond.encoder's) and a hub .pth load the same weights; another architecture is refused."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file

    from jaxshape.convert import from_torch
    from jaxshape.convert.dino import from_hub_names, to_hub_names
    from jaxshape.models import build
    from jaxshape.trainer.defaults import stage_config
    from jaxshape.trainer.tasks.base import load_image_encoder

    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                                                 image_size=224, patch_size=14, num_register_tokens=4)
    torch.manual_seed(0)
    sd = {k: v.numpy() for k, v in transformers.Dinov2WithRegistersModel(cfg).state_dict().items()}
    hub = to_hub_names(sd)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file({k: np.ascontiguousarray(v) for k, v in from_hub_names(hub, "hf", "4.x").items()},
              str(tmp_path / "hf" / "model.safetensors"))
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hub.items()}, tmp_path / "hub.pth")
    encoder = build("dinov2_tiny")
    expected = from_torch(encoder, hub)
    cond = stage_config("ss_flow").cond
    cond.encoder = "dinov2_tiny"
    for path in (tmp_path / "hf", tmp_path / "hub.pth"):
        cond.encoder_checkpoint = str(path)
        got = load_image_encoder(encoder, cond, 0)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cond.encoder_checkpoint = str(tmp_path / "hf")
    with pytest.raises(ValueError, match="set cond.encoder to the checkpoint's architecture"):
        load_image_encoder(build("dinov2_tiny", depth=3), cond, 0)


@pytest.mark.slow
@pytest.mark.parametrize("pre_encode", [False, True])
def test_stop_and_resume_with_views_is_bit_exact(view_records, vae_dirs, tmp_path, pre_encode):
    """6 steps straight == 3 steps, then a new run from the checkpoint for 3 more: the same views are drawn (grain's
    iterator state, or the pre-encoded iterator's step), so the losses and parameters agree bit for bit."""
    over = {"steps": 6, "ckpt_every": 3, "pre_encode": pre_encode, "async_checkpointing": False}
    straight = run(_config(view_records, vae_dirs, **over), tmp_path / "a", mesh=one_device())
    first = run(_config(view_records, vae_dirs, **over), tmp_path / "b", mesh=one_device(), max_steps=3)
    rest = run(_config(view_records, vae_dirs, **over), tmp_path / "b", mesh=one_device())
    assert rest["step"] == 6 and len(first["losses"]) == len(rest["losses"]) == 3
    assert first["losses"] + rest["losses"] == straight["losses"]
    for a, b in zip(jax.tree.leaves(rest["state"].params), jax.tree.leaves(straight["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pre_encoded_latents_draw_a_fresh_view_every_step(view_records, vae_dirs, tmp_path):
    """pre_encode with images keeps the latents and draws each example's view per step from its record (not once):
    the views an example is shown differ between epochs, each one is the record's view preprocessed, and a
    restored iterator repeats the draw."""
    from jaxshape.data.records import RecordSource
    from jaxshape.image import decode_png, trellis_preprocess
    from jaxshape.trainer.latents import pre_encoded_iterator

    config = _config(view_records, vae_dirs, **{"pre_encode": True})
    task = make_task(config)
    frozen = {**task.frozen_variables(), **task.load_frozen()}
    it = pre_encoded_iterator(config, task, frozen, tmp_path)
    src = RecordSource(view_records)
    candidates = {}
    for i in range(len(src)):
        ex = src[i]
        candidates[ex["id"]] = [trellis_preprocess(decode_png(v), size=28).astype(np.float32) / 255
                                for v in ex["cond_views"]]
    record_of = {lat.tobytes(): int(r) for lat, r in zip(it.arrays["latent"], it.arrays["record"])}
    seen = {}
    state = None
    for step in range(8):  # 4 epochs of 8 examples at batch 4
        if step == 4:
            state = it.get_state()
        batch = next(it)
        assert set(batch) == {"latent", "cond_image"} and batch["cond_image"].shape == (4, 1, 28, 28, 3)
        for j, img in enumerate(batch["cond_image"][:, 0]):
            mid = src.ids[record_of[batch["latent"][j].tobytes()]]
            k = [n for n, c in enumerate(candidates[mid]) if np.array_equal(c, img)]
            assert len(k) == 1
            seen.setdefault(mid, set()).add(k[0])
    assert len(seen) == 8 and sum(len(v) > 1 for v in seen.values()) >= 4  # views vary across epochs
    again = pre_encoded_iterator(config, task, frozen, tmp_path)  # from the cached latents
    again.set_state(state)
    it.set_state(state)
    a, b = next(it), next(again)
    np.testing.assert_array_equal(a["cond_image"], b["cond_image"])


def test_views_with_grain_worker_processes(view_records):
    """worker_count > 0 (grain multiprocessing) yields the same batches, views included, as the main process."""
    keys = ("occupancy", "cond_image")
    kw = dict(family=SPARSE_STRUCTURE, keys=keys, seed=0, views=ViewConfig(count=2, size=28),
              process_index=0, process_count=1)
    main = iter(make_dataset(view_records, 4, **kw))
    workers = iter(make_dataset(view_records, 4, worker_count=2, **kw))
    for _ in range(3):
        a, b = next(main), next(workers)
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k])
