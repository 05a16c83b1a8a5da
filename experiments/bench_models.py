"""jaxshape vs PyTorch (our mirrors in tests/torch_reference, or the real upstream modules), same process, same
inputs, same weights.

    python experiments/bench_models.py                       # CPU-sized configs + released widths (reduced depth)
    python experiments/bench_models.py --sizes cpu --reps 5  # quick
    python experiments/bench_models.py --models ss_flow,vecset_dit --sizes released
    python experiments/bench_models.py --mode library --sizes user --models ss_enc,ss_dec,ss_flow,vecset_dit \
        --upstream-trellis ~/TRELLIS --upstream-partpacker ~/PartPacker     # as a notebook user, vs real upstream

``--mode cli`` (default) runs as ``python -m jaxshape.train`` does: re-executed once with the glibc malloc tunables
(``jaxshape.cpu_allocator``); ``--mode library`` runs in this process as it was started, as ``import jaxshape`` in a
user's own code does. ``--sizes user`` are the shapes users reported (64³ SS encoder / decoder with channels
16/32/64 and 2+2 res blocks, a 4,096-token SS flow and a 2,048-token PartPacker DiT, width 256, 4 blocks, 257
condition tokens). ``--upstream-trellis DIR`` / ``--upstream-partpacker DIR`` time the real upstream modules of a
checkout (TRELLIS ``trellis/models/sparse_structure_{vae,flow}.py`` with ``ATTN_BACKEND=sdpa``; PartPacker
``flow/modules/dit.py``, which needs ``einops``) instead of our mirrors, loaded with the same weights (the vecset
VAE stays our mirror); nothing fetched is committed.

For each model and size: forward and a full train step (forward + backward + AdamW) of jaxshape (jitted; compile time
reported separately) and PyTorch eager (optionally ``torch.compile`` with ``--torch-compile``), interleaved
(jax, torch, jax, torch, ...) so machine noise hits both; min and median over ``--reps``; analytic FLOPs from the
jaxpr (dot_general + conv only; train step = 3 × forward); GFLOP/s and % of the fp32 matmul peak measured in the same
run; peak memory (XLA's planned temp buffers for jax; sampled RSS growth during one step for both).
Writes ``experiments/results/bench_models.md``. Prints tables, never asserts timings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from functools import partial
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
MODE = "library" if any(a in ("--mode=library",) for a in sys.argv) or \
    any(a == "--mode" and b == "library" for a, b in zip(sys.argv, sys.argv[1:])) else "cli"
if __name__ == "__main__" and MODE == "cli":  # allocator tunables as `python -m jaxshape.train` (JAXSHAPE_CPU_MALLOC=0)
    from jaxshape.cpu_allocator import reexec_with_cpu_malloc_tunables
    reexec_with_cpu_malloc_tunables()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from bench_lib import PeakRSS, block, interleaved, machine_description, matmul_peak, summary  # noqa
from jaxshape.convert import from_torch  # noqa: E402
from jaxshape.flops import count_flops  # noqa: E402
from jaxshape.models import (  # noqa: E402
    SparseStructureDecoder,
    SparseStructureEncoder,
    SparseStructureFlowModel,
    VecSetDiT,
    VecSetVAE,
)
from tests.torch_reference import partpacker as PP  # noqa: E402
from tests.torch_reference import trellis_ss as T  # noqa: E402

LR, WD = 1e-4, 0.01
BATCH = 1  # set by --batch; every case builds its inputs with this leading size
# the PyTorch classes timed: our mirrors, or a checkout's upstream modules (--upstream-trellis / --upstream-partpacker)
TORCH_SS = types.SimpleNamespace(SparseStructureEncoder=T.SparseStructureEncoder,
                                 SparseStructureDecoder=T.SparseStructureDecoder,
                                 SparseStructureFlowModel=T.SparseStructureFlowModel, upstream=False)
TORCH_DIT = types.SimpleNamespace(DiT=PP.DiT, upstream=False)


def _package_stubs(root: Path, names):
    """Register ``names`` as empty packages rooted in ``root`` (their ``__init__`` files import the whole upstream
    app: pipelines, renderers, CUDA extensions), so only the model files and what they import load."""
    for name in names:
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / name.replace(".", "/"))]
        sys.modules[name] = mod


def use_upstream(trellis: str | None, partpacker: str | None) -> list[str]:
    """Swap the PyTorch side to the upstream modules of the given checkouts; returns what was swapped."""
    import importlib

    done = []
    if trellis:
        root = Path(trellis).expanduser().resolve()
        os.environ.setdefault("ATTN_BACKEND", "sdpa")
        os.environ.setdefault("SPARSE_ATTN_BACKEND", "sdpa")
        _package_stubs(root, ("trellis", "trellis.models"))
        vae = importlib.import_module("trellis.models.sparse_structure_vae")
        fl = importlib.import_module("trellis.models.sparse_structure_flow")
        TORCH_SS.SparseStructureEncoder, TORCH_SS.SparseStructureDecoder = (vae.SparseStructureEncoder,
                                                                            vae.SparseStructureDecoder)
        TORCH_SS.SparseStructureFlowModel, TORCH_SS.upstream = fl.SparseStructureFlowModel, True
        done.append(f"TRELLIS {root} (trellis/models/sparse_structure_vae.py, sparse_structure_flow.py)")
    if partpacker:
        root = Path(partpacker).expanduser().resolve()
        _package_stubs(root, ("flow", "flow.modules", "vae", "vae.modules"))
        TORCH_DIT.DiT, TORCH_DIT.upstream = importlib.import_module("flow.modules.dit").DiT, True
        done.append(f"PartPacker {root} (flow/modules/dit.py)")
    return done


def _rand_sd(tmodel, seed):
    """Random non-zero weights (zero-initialised layers too, so nothing is trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in tmodel.state_dict().items():
        if "pos_emb" in k:
            sd[k] = v.clone()
            continue
        std = 1.0 / np.sqrt(v.shape[1] * int(np.prod(v.shape[2:]))) if v.ndim >= 2 else 0.02
        sd[k] = torch.randn(v.shape, generator=g) * std + (1.0 if k.endswith("gamma") else 0.0)
    tmodel.load_state_dict(sd)
    return {k: v.numpy() for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------- model cases
# Each case returns: jax_fwd(params, *inputs), torch_fwd(*inputs), params, other (non-param collections),
# jax inputs, torch inputs, torch modules, target shape info. Loss = mean((out - target)^2) on both sides.


class NoSuchSize(ValueError):
    """A case that has no config at the requested size (skipped, said so)."""


def _ss_vae_args(size):
    if size == "cpu":
        enc = dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 32, 64])
        res, note = 32, "channels 16/32/64, 1+1 ResBlocks, 32³"
    elif size == "user":
        enc = dict(in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[16, 32, 64])
        res, note = 64, "channels 16/32/64, 2+2 ResBlocks, 64³ ↔ 16³×8"
    else:
        enc = dict(in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2,
                   channels=[32, 128, 512])
        res, note = 32, "released widths 32/128/512 and depth 2+2, 32³ input (released: 64³)"
    dec = dict(enc, out_channels=1, channels=list(reversed(enc["channels"])))
    dec.pop("in_channels")
    return enc, dec, res, note + ", batch 1"


def _ss_encode(te, x, n):
    """The PyTorch encoder's posterior sample: ours takes the noise, upstream's draws it (same work)."""
    return te(x, sample_posterior=True) if TORCH_SS.upstream else te(x, sample_posterior=True, noise=n)


def case_ss_vae(size, dtype=None, parts=("enc", "dec")):
    enc, dec, res, note = _ss_vae_args(size)
    te, td = TORCH_SS.SparseStructureEncoder(**enc), TORCH_SS.SparseStructureDecoder(**dec)
    je, jd = SparseStructureEncoder(**enc, dtype=dtype), SparseStructureDecoder(**dec, dtype=dtype)
    ve, vd = from_torch(je, _rand_sd(te, 1)), from_torch(jd, _rand_sd(td, 2))
    rng = np.random.default_rng(0)
    x = (rng.random((BATCH, 1, res, res, res)) > 0.7).astype(np.float32)
    r = res // 4
    noise = rng.standard_normal((BATCH, 8, r, r, r)).astype(np.float32)
    jx, jn = jnp.asarray(np.moveaxis(x, 1, -1)), jnp.asarray(np.moveaxis(noise, 1, -1))
    tx, tn = torch.from_numpy(x), torch.from_numpy(noise)
    if parts == ("dec",):  # the decoder alone, from a latent
        def jfwd(params, other, z):
            return jd.apply({"params": params["dec"]}, z)

        return dict(note="decoder " + note, jfwd=jfwd, tfwd=td, params={"dec": vd["params"]}, other={},
                    jin=(jn,), tin=(tn,), tmods=[td],
                    target=(jnp.asarray(rng.standard_normal((BATCH, res, res, res, 1)).astype(np.float32)), None),
                    nchw_out=True)
    if parts == ("enc",):  # the encoder alone: its posterior sample
        def jfwd(params, other, x, n):
            return je.apply({"params": params["enc"]}, x, sample_posterior=True, noise=n)

        return dict(note="encoder " + note, jfwd=jfwd, tfwd=lambda x, n: _ss_encode(te, x, n),
                    params={"enc": ve["params"]}, other={}, jin=(jx, jn), tin=(tx, tn), tmods=[te],
                    target=(jnp.asarray(np.moveaxis(noise, 1, -1)), None), nchw_out=True)

    def jfwd(params, other, x, n):
        z = je.apply({"params": params["enc"]}, x, sample_posterior=True, noise=n)
        return jd.apply({"params": params["dec"]}, z)

    def tfwd(x, n):
        return td(_ss_encode(te, x, n))

    params = {"enc": ve["params"], "dec": vd["params"]}
    return dict(note=note, jfwd=jfwd, tfwd=tfwd, params=params, other={}, jin=(jx, jn), tin=(tx, tn),
                tmods=[te, td], target=(jx, tx))


def case_ss_flow(size, dtype=None):
    if size == "cpu":
        args = dict(resolution=8, in_channels=8, model_channels=256, cond_channels=256, out_channels=8,
                    num_blocks=4, num_heads=4, patch_size=1, qk_rms_norm=True)
        m, note = 64, "width 256, 4 heads, 4 blocks, 8³ = 512 tokens, 64 cond tokens, batch 1"
    elif size == "user":
        args = dict(resolution=16, in_channels=8, model_channels=256, cond_channels=256, out_channels=8,
                    num_blocks=4, num_heads=4, patch_size=1, qk_rms_norm=True)
        m, note = 257, "width 256, 4 heads, 4 blocks, 16³ = 4096 tokens, 257 cond tokens, batch 1"
    else:
        args = dict(resolution=16, in_channels=8, model_channels=1024, cond_channels=1024, out_channels=8,
                    num_blocks=1, num_heads=16, patch_size=1, qk_rms_norm=True)
        m, note = 1374, "released L width 1024/16 heads, 16³ = 4096 tokens, 1374 cond tokens; 1 block (of 24), batch 1"
    tm = TORCH_SS.SparseStructureFlowModel(**args)
    jm = SparseStructureFlowModel(**args, dtype=dtype)
    v = from_torch(jm, _rand_sd(tm, 3))
    rng = np.random.default_rng(1)
    r = args["resolution"]
    x = rng.standard_normal((BATCH, 8, r, r, r)).astype(np.float32)
    t = np.full((BATCH,), 500.0, np.float32)
    c = rng.standard_normal((BATCH, m, args["cond_channels"])).astype(np.float32)
    jin = (jnp.asarray(np.moveaxis(x, 1, -1)), jnp.asarray(t), jnp.asarray(c))
    tin = tuple(torch.from_numpy(a) for a in (x, t, c))

    def jfwd(params, other, x, t, c):
        return jm.apply({"params": params, **other}, x, t, c)

    other = {k: val for k, val in v.items() if k != "params"}
    return dict(note=note, jfwd=jfwd, tfwd=tm, params=v["params"], other=other, jin=jin, tin=tin, tmods=[tm],
                target=(jnp.asarray(rng.standard_normal((BATCH, r, r, r, 8)).astype(np.float32)), None), nchw_out=True)


def case_vecset_dit(size, dtype=None):
    if size == "cpu":
        kw = dict(hidden_dim=256, num_heads=4, latent_size=512, latent_dim=64, num_layers=4, qknorm=True,
                  qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
        n, m, note = 512, 64, "width 256, 4 heads, 4 layers, 512 tokens, 64 cond tokens, batch 1"
    elif size == "user":
        kw = dict(hidden_dim=256, num_heads=4, latent_size=1024, latent_dim=64, num_layers=4, qknorm=True,
                  qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
        n, m, note = 2048, 257, "width 256, 4 heads, 4 layers, 2 × 1024 = 2048 tokens, 257 cond tokens, batch 1"
    else:
        kw = dict(hidden_dim=1536, num_heads=16, latent_size=4096, latent_dim=64, num_layers=1, qknorm=True,
                  qknorm_type="RMSNorm", use_parts=True, part_embed_mode="part2_only")
        n, m = 4096, 1374
        note = "released width 1536/16 heads, 4096 tokens, 1374 cond tokens (1536-d); 1 layer (of 24), batch 1"
    tm = TORCH_DIT.DiT(gradient_checkpointing=False, **kw)
    jm = VecSetDiT(gradient_checkpointing=False, dtype=dtype, **kw)
    v = from_torch(jm, _rand_sd(tm, 4))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((BATCH, n, 64)).astype(np.float32)
    c = rng.standard_normal((BATCH, m, kw["hidden_dim"])).astype(np.float32)
    t = np.full((BATCH,), 500.0, np.float32)
    jin = tuple(jnp.asarray(a) for a in (x, c, t))
    tin = tuple(torch.from_numpy(a) for a in (x, c, t))

    def jfwd(params, other, x, c, t):
        return jm.apply({"params": params}, x, c, t)

    return dict(note=note, jfwd=jfwd, tfwd=tm, params=v["params"], other={}, jin=jin, tin=tin, tmods=[tm],
                target=(jnp.asarray(rng.standard_normal((BATCH, n, 64)).astype(np.float32)), None))


def case_vecset_vae(size, dtype=None):
    if size not in ("cpu", "released"):
        raise NoSuchSize(f"no vecset VAE config at size {size!r}")
    if size == "cpu":
        cfg = dict(hidden_dim=256, num_heads=4, num_dec_layers=2, dec_hidden_dim=256, dec_num_heads=4,
                   query_hidden_dim=256, query_num_heads=4, latent_dim=64)
        npts, nsal, nfps, nfps_s, nq = 4096, 1024, 384, 128, 4096
        note = "width 256, 4 heads, 2 decoder layers, 4096+1024 points -> 384+128 latents, 4096 queries, batch 1"
    else:
        cfg = dict(hidden_dim=1024, num_heads=16, num_dec_layers=1, dec_hidden_dim=1024, dec_num_heads=16,
                   query_hidden_dim=1024, query_num_heads=16, latent_dim=64)
        npts, nsal, nfps, nfps_s, nq = 4096, 2048, 1024, 1024, 4096
        note = ("released widths 1024/16 heads, 1 decoder layer (of 24), 4096+2048 points -> 1024+1024 latents "
                "(released: up to 2048+2048), 4096 queries, batch 1")
    tm = PP.Model(PP.ModelConfig(**cfg))
    for mod in tm.modules():
        if hasattr(mod, "gradient_checkpointing"):
            mod.gradient_checkpointing = False
    jm = VecSetVAE(remat_policy=None, dtype=dtype, **cfg)
    v = from_torch(jm, _rand_sd(tm, 5))
    rng = np.random.default_rng(3)
    data = dict(pointcloud=rng.uniform(-1, 1, (BATCH, npts, 3)).astype(np.float32),
                pointcloud_dorases=rng.uniform(-1, 1, (BATCH, nsal, 3)).astype(np.float32),
                fps_indices=np.stack([rng.permutation(npts)[:nfps] for _ in range(BATCH)]).astype(np.int32),
                fps_indices_dorases=np.stack([rng.permutation(nsal)[:nfps_s] for _ in range(BATCH)]).astype(np.int32),
                query_points=rng.uniform(-1, 1, (BATCH, nq, 3)).astype(np.float32))
    noise = rng.standard_normal((BATCH, nfps + nfps_s, 64)).astype(np.float32)
    jdata = {k: jnp.asarray(a) for k, a in data.items()}
    tdata = {k: torch.from_numpy(a) for k, a in data.items()}

    def jfwd(params, other, data, noise):
        return jm.apply({"params": params}, data, sample_posterior=True, noise=noise)[0]

    def tfwd(data, noise):
        post = tm.encode(data)
        z = post.sample(noise=noise)
        return tm.query(data["query_points"], tm.decode(z))[..., 0]

    return dict(note=note, jfwd=jfwd, tfwd=tfwd, params=v["params"], other={}, jin=(jdata, jnp.asarray(noise)),
                tin=(tdata, torch.from_numpy(noise)), tmods=[tm],
                target=(jnp.asarray(rng.standard_normal((BATCH, nq)).astype(np.float32)), None))


CASES = {"ss_vae": ("TRELLIS SS VAE (enc+dec)", case_ss_vae),
         "ss_enc": ("TRELLIS SS encoder", partial(case_ss_vae, parts=("enc",))),
         "ss_dec": ("TRELLIS SS decoder", partial(case_ss_vae, parts=("dec",))),
         "ss_flow": ("TRELLIS SS flow DiT", case_ss_flow),
         "vecset_vae": ("PartPacker vecset VAE", case_vecset_vae), "vecset_dit": ("PartPacker DiT", case_vecset_dit)}
DEFAULT_MODELS = "ss_vae,ss_flow,vecset_vae,vecset_dit"


def with_dtype(name, size, dtype):
    """The jaxshape forward of a case rebuilt with compute ``dtype`` (same parameter tree and values)."""
    return CASES[name][1](size, dtype)["jfwd"]


# ----------------------------------------------------------------------------------------------- runner


def bench_case(name, size, reps, torch_compile, warmup=3):
    c = CASES[name][1](size)
    jfwd, params, other, jin = c["jfwd"], c["params"], c["other"], c["jin"]
    jt = c["target"][0]
    tt = torch.from_numpy(np.array(jt))
    if c.get("nchw_out"):
        tt = tt.movedim(-1, 1).contiguous()
    elif name == "ss_vae":
        tt = c["target"][1]

    def jloss(params, other, jin, tgt):
        out = jfwd(params, other, *jin)
        return jnp.mean(jnp.square(out.astype(jnp.float32) - tgt))

    tx = optax.adamw(LR, weight_decay=WD)

    def jstep(params, opt_state, other, jin, tgt):
        loss, g = jax.value_and_grad(jloss)(params, other, jin, tgt)
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    fwd_j = jax.jit(jfwd)
    step_j = jax.jit(jstep, donate_argnums=(0, 1))
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    fwd_c = fwd_j.lower(params, other, *jin).compile()
    t_cf = time.perf_counter() - t0
    t0 = time.perf_counter()
    step_c = step_j.lower(params, opt_state, other, jin, jt).compile()
    t_cs = time.perf_counter() - t0
    mem = step_c.memory_analysis()
    xla_temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
    flops_fwd = count_flops(lambda p, o, i: jfwd(p, o, *i), params, other, jin)

    state = {"p": jax.tree.map(jnp.copy, params), "o": opt_state}

    def run_jstep():
        state["p"], state["o"], loss = step_c(state["p"], state["o"], other, jin, jt)
        block(loss)

    tmods = c["tmods"]
    tparams = [p for m in tmods for p in m.parameters()]
    topt = torch.optim.AdamW(tparams, lr=LR, weight_decay=WD)
    tfwd, tin = c["tfwd"], c["tin"]

    def run_tfwd(f=tfwd):
        for m in tmods:
            m.eval()
        with torch.no_grad():
            f(*tin)

    def run_tstep(f=tfwd):
        for m in tmods:
            m.train()
        topt.zero_grad(set_to_none=True)
        loss = torch.mean(torch.square(f(*tin).float() - tt))
        loss.backward()
        topt.step()

    fns_f = {"jax": lambda: block(fwd_c(params, other, *jin)), "torch": run_tfwd}
    fns_s = {"jax": run_jstep, "torch": run_tstep}
    compile_note = {}
    if torch_compile:
        cf = torch.compile(tfwd)
        t0 = time.perf_counter()
        run_tfwd(cf)
        run_tstep(cf)
        compile_note["torch_compile_s"] = time.perf_counter() - t0
        fns_f["torch.compile"] = partial(run_tfwd, cf)
        fns_s["torch.compile"] = partial(run_tstep, cf)
    tf = interleaved(fns_f, reps, warmup)
    ts = interleaved(fns_s, reps, warmup)
    with PeakRSS() as mj:
        run_jstep()
    with PeakRSS() as mt:
        run_tstep()
    return dict(note=c["note"], flops_fwd=flops_fwd, compile_fwd=t_cf, compile_step=t_cs, fwd=tf, step=ts,
                xla_temp=xla_temp, rss_jax=mj.delta, rss_torch=mt.delta, runners={"jax": run_jstep, "torch": run_tstep},
                **compile_note)


def fmt_row(model, size, what, r, key, flops, peak):
    t = r[key]
    jmin, jmed = summary(t["jax"])
    tmin, tmed = summary(t["torch"])
    cells = [model, size, what, f"{jmin:.3f} / {jmed:.3f}", f"{tmin:.3f} / {tmed:.3f}"]
    if "torch.compile" in t:
        cmin, cmed = summary(t["torch.compile"])
        cells.append(f"{cmin:.3f} / {cmed:.3f}")
    else:
        cells.append("–")
    cells += [f"**{tmed / jmed:.2f}×** ({tmin / jmin:.2f}×)", f"{flops / 1e9:.1f}",
              f"{flops / jmin / 1e9:.0f} ({100 * flops / jmin / 1e9 / peak:.0f}%)",
              f"{flops / tmin / 1e9:.0f} ({100 * flops / tmin / 1e9 / peak:.0f}%)"]
    if key == "step":
        cells += [f"{r['compile_step']:.1f}", f"{r['xla_temp'] / 2**20:.0f} / {r['rss_jax'] / 2**20:.0f}",
                  f"{r['rss_torch'] / 2**20:.0f}"]
    else:
        cells += [f"{r['compile_fwd']:.1f}", "", ""]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| model | size | what | jaxshape min / median (s) | torch eager min / median (s) | "
          "torch.compile min / median (s) | speed-up vs eager, median (min) | GFLOP | jaxshape GFLOP/s (% peak) | "
          "torch GFLOP/s (% peak) | jax compile (s) | jax peak MiB: XLA temp / RSS Δ | torch RSS Δ MiB |\n"
          + "|---" * 13 + "|")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {','.join(CASES)}")
    ap.add_argument("--sizes", default="cpu,released", help="comma-separated, of cpu, released, user")
    ap.add_argument("--mode", choices=("cli", "library"), default="cli",
                    help="cli: re-executed with the train CLI's malloc tunables; library: this process as started")
    ap.add_argument("--upstream-trellis", default=None, metavar="DIR", help="a TRELLIS checkout: time its modules")
    ap.add_argument("--upstream-partpacker", default=None, metavar="DIR", help="a PartPacker checkout: its DiT")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls of each function first (default 3: the "
                    "host heap settles in the first few steps: docs/performance.md, \"Allocator tunables\")")
    ap.add_argument("--torch-compile", action="store_true")
    ap.add_argument("--batch", type=int, default=1, help="leading batch size of every case's inputs (default 1)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_models.md"))
    args = ap.parse_args(argv)
    if args.batch < 1:
        raise SystemExit(f"--batch must be ≥ 1, got {args.batch}")
    global BATCH
    BATCH = args.batch
    unknown = sorted(set(args.models.split(",")) - set(CASES)) + sorted(set(args.sizes.split(",")) -
                                                                        {"cpu", "released", "user"})
    if unknown:
        raise SystemExit(f"unknown --models / --sizes {unknown}; models: {list(CASES)}, sizes: cpu, released, user")
    upstream = use_upstream(args.upstream_trellis, args.upstream_partpacker)
    torch.set_num_threads(os.cpu_count() or 1)
    desc = machine_description()
    print(desc, flush=True)
    pk = matmul_peak(2048, 9)
    pk4 = matmul_peak(4096, 3)
    peak = max(*pk.values(), *pk4.values())
    print(f"matmul peak (fp32) 2048: jax {pk['jax']:.0f}, torch {pk['torch']:.0f}; 4096: jax {pk4['jax']:.0f}, "
          f"torch {pk4['torch']:.0f} GFLOP/s -> peak {peak:.0f}", flush=True)
    rows, notes, status = [], [], []
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            label = CASES[name][0]
            print(f"== {label} [{size}]", flush=True)
            try:
                r = bench_case(name, size, args.reps, args.torch_compile, args.warmup)
            except NoSuchSize as e:
                notes.append(f"- {label}, {size}: skipped ({e})")
                continue
            note = r["note"].replace("batch 1", f"batch {BATCH}")
            notes.append(f"- {label}, {size}: {note}; jax compile: forward {r['compile_fwd']:.1f} s, "
                         f"train step {r['compile_step']:.1f} s"
                         + (f"; torch.compile warm-up {r['torch_compile_s']:.1f} s" if "torch_compile_s" in r else ""))
            ratio = summary(r["step"]["torch"])[1] / summary(r["step"]["jax"])[1]
            pct = 100 * 3 * r["flops_fwd"] / summary(r["step"]["jax"])[0] / 1e9 / peak
            status.append(f"- {label}, {size}: train step {ratio:.2f}× torch eager (targets ≥ 1.0×: "
                          f"{'met' if ratio >= 1.0 else 'NOT met'}; ≥ 1.5×: {'met' if ratio >= 1.5 else 'NOT met'})"
                          + (f"; {pct:.0f}% of the matmul peak (target ≥ 60%: {'met' if pct >= 60 else 'NOT met'})"
                             if "DiT" in label else ""))
            rows.append(fmt_row(label, size, "forward", r, "fwd", r["flops_fwd"], peak))
            rows.append(fmt_row(label, size, "train step", r, "step", 3 * r["flops_fwd"], peak))
            print(rows[-2] + "\n" + rows[-1], flush=True)
    load = os.getloadavg()
    text = "\n".join([
        "# jaxshape vs PyTorch " + ("(upstream modules)" if upstream else "(mirror in tests/torch_reference)")
        + f", CPU, {args.mode} mode", "",
        f"Machine: {desc}; load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}.", "",
        f"Mode: {args.mode} (" + ("re-executed with the train CLI's glibc malloc tunables" if args.mode == "cli"
                                  else "one process as started, no re-exec, no tunables: as `import jaxshape` in a "
                                       "user's notebook") + "). PyTorch side: "
        + ("; ".join(f"the upstream modules of {u}" for u in upstream) + ("; the rest our mirrors" if
           len(upstream) < 2 else "") if upstream else "our mirrors (tests/torch_reference)") + ".", "",
        f"fp32 matmul peak measured in this run: jax {pk['jax']:.0f} / torch {pk['torch']:.0f} GFLOP/s (n=2048), "
        f"jax {pk4['jax']:.0f} / torch {pk4['torch']:.0f} (n=4096); % peak below is against {peak:.0f} GFLOP/s.", "",
        f"Command: `python experiments/bench_models.py --mode {args.mode} --sizes {args.sizes} --models {args.models} "
        f"--reps {args.reps}" + ("".join(f" --upstream-{k} DIR" for k, v in (("trellis", args.upstream_trellis),
                                                                            ("partpacker", args.upstream_partpacker))
                                 if v))
        + (f" --warmup {args.warmup}" if args.warmup != 3 else "") + (f" --batch {BATCH}" if BATCH != 1 else "")
        + (" --torch-compile" if args.torch_compile else "") + "`", "",
        f"Timings interleaved (jax, torch, jax, torch, ...) in one process, fp32, batch {BATCH}, "
        f"{args.reps} repetitions after {args.warmup} warm-up calls each. Train step = forward + MSE loss + backward "
        "+ AdamW "
        "(jax: one jitted function with donated params/optimizer state; torch: eager `backward()` + `AdamW.step()`); "
        "no rematerialisation on either side. GFLOP = analytic matmul + conv FLOPs from the jaxpr (train step = 3 × "
        "forward). Speed-up = torch time / jaxshape time. RSS Δ = sampled growth of the process RSS during one step "
        "(allocator caching makes it a lower bound).", "",
        HEADER, *rows, "", "Configs:", *notes, "", "## Performance targets in this run", "", *status, "",
        "Measured reasons for every target not met, and what would close it: docs/performance.md "
        "(\"Why the remaining gaps\").", ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
