"""One table for an accelerator: train-step time, tokens/s, MFU (bf16) and device memory of the models users train.

    pip install -e . && pip install -U "jax[cuda12]"      # or "jax[tpu]"; torch with CUDA optional
    python experiments/bench_accelerator.py                # under five minutes on one GPU / TPU chip
    python experiments/bench_accelerator.py --tiny         # CPU-size shapes (what CI runs: nothing about time)

Cases, in bf16 compute with fp32 parameters, batch ``--batch`` (default 4; 1 with ``--tiny``):

* ``ss_flow_L``: TRELLIS's img-L flow (``ss_flow_img_dit_L_16l8_fp16``: width 1024, 16³ = 4,096 tokens, 1,374 × 1024
  condition tokens) with ``--depth`` of its 24 blocks (default 4), the train step (forward + MSE + backward + AdamW);
* ``partpacker_dit``: PartPacker's released DiT (width 1536, 2 × 4,096 tokens, 1,370 × 1536 condition tokens) with
  ``--depth`` of its 24 layers, the train step;
* ``ss_vae``: TRELLIS's SS-VAE at 64³ (released widths 32 / 128 / 512 and depth, encoder + decoder), the train step
  (dice-free MSE on the logits: the FLOPs and memory of the released recipe's step);
* ``dinov2_vitl14_reg`` (TRELLIS, 518 px), ``dinov3_vitl16`` (TRELLIS.2, 512 px), ``dinov2_vitg14`` (PartPacker,
  518 px): the frozen encoders' forward (they are never trained), images/s.

The transformer cases run once per attention path (``jax.nn.dot_product_attention`` with ``implementation="cudnn"``
and ``"xla"`` on GPU; ``"xla"`` elsewhere); the VAE runs on XLA's conv path (``formulation="lax"``, what ``"auto"``
picks on accelerators). MFU = the analytic matmul / conv FLOPs of a step (``jaxshape.flops``; a train step counted
as 3 × its forward) per second over the chip's bf16 dense peak (a table of known chips; otherwise the bf16 matmul
peak measured here, said so). Memory: XLA's planned bytes for the step (arguments + outputs + temporaries,
``compiled.memory_analysis()``) and, where the backend reports it, the process's peak device memory so far.
With torch + CUDA (or ``--torch`` on CPU), the same models as our PyTorch mirrors (``tests/torch_reference``;
DINOv2 through ``transformers``) in bf16 autocast on the same device. Writes
``experiments/results/bench_accelerator.md``; prints tables, never asserts a time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench_lib import interleaved  # noqa: E402
from jaxshape.flops import count_flops  # noqa: E402
from jaxshape.models import build  # noqa: E402
from jaxshape.models.released import released_args  # noqa: E402

# bf16 dense peak FLOP/s per chip, by a substring of jax's device_kind (vendor data sheets)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
             "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


def chip_peak(device) -> tuple[float | None, str]:
    kind = getattr(device, "device_kind", "")
    for key, peak in BF16_PEAK.items():
        if key in kind:
            return peak, f"{kind} bf16 dense peak {peak / 1e12:.0f} TFLOP/s (data sheet)"
    return None, f"{kind or device.platform}: no data-sheet peak known"


def matmul_peak_bf16(n: int, reps: int = 5) -> float:
    """Measured bf16 matmul FLOP/s of one ``n × n`` product on the default device."""
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(ts)


# ------------------------------------------------------------------------------------------------------ cases
# Each case: (module(s), forward(params, *inputs) -> output, inputs, whether it trains, tokens per example, note)


def case_ss_flow(tiny, depth, batch, attention):
    args = released_args("ss_flow_img_dit_L_16l8_fp16")[1]
    args.update(use_fp16=False, num_blocks=depth)
    m = 1374
    if tiny:
        args.update(resolution=4, model_channels=64, cond_channels=64, num_heads=2)
        m = 16
    model = build("SparseStructureFlowModel", args, dtype=jnp.bfloat16, attention_impl=attention)
    r, c = args["resolution"], args["cond_channels"]
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((batch, r, r, r, 8)), np.full((batch,), 500.0), rng.standard_normal((batch, m, c)))
    note = f"width {args['model_channels']}, {r}³ = {r ** 3} tokens, {m} cond tokens, {depth} of 24 blocks"
    return dict(model=model, apply=lambda v, x, t, c: model.apply(v, x, t, c), inputs=inputs, train=True,
                tokens=r ** 3, note=note, torch=("ss_flow", args))


def case_partpacker_dit(tiny, depth, batch, attention):
    args = released_args("partpacker_dit")[1]
    args.update(num_layers=depth, gradient_checkpointing=False)
    m = 1370
    if tiny:
        args.update(hidden_dim=64, num_heads=2, latent_size=64)
        m = 16
    model = build("VecSetDiT", args, dtype=jnp.bfloat16, attention_impl=attention)
    n = 2 * args["latent_size"]
    rng = np.random.default_rng(1)
    inputs = (rng.standard_normal((batch, n, args["latent_dim"])), rng.standard_normal((batch, m, args["hidden_dim"])),
              np.full((batch,), 500.0))
    note = f"width {args['hidden_dim']}, 2 × {n // 2} tokens, {m} cond tokens, {depth} of 24 layers"
    return dict(model=model, apply=lambda v, x, c, t: model.apply(v, x, c, t), inputs=inputs, train=True,
                tokens=n, note=note, torch=("partpacker_dit", args))


def case_ss_vae(tiny, depth, batch, attention):
    enc = released_args("ss_enc_conv3d_16l8_fp16")[1]
    dec = released_args("ss_dec_conv3d_16l8_fp16")[1]
    enc["use_fp16"] = dec["use_fp16"] = False
    res = 64
    if tiny:
        enc.update(channels=[8, 16, 32], num_res_blocks=1, num_res_blocks_middle=1)
        dec.update(channels=[32, 16, 8], num_res_blocks=1, num_res_blocks_middle=1)
        res = 16
    e = build("SparseStructureEncoder", enc, dtype=jnp.bfloat16)
    d = build("SparseStructureDecoder", dec, dtype=jnp.bfloat16)

    class Both:  # init / apply of encoder + decoder as one
        @staticmethod
        def init(key, x, noise):
            ke, kd = jax.random.split(key)
            ve = e.init(ke, x, sample_posterior=True, noise=noise)
            z = e.apply(ve, x, sample_posterior=True, noise=noise)
            return {"params": {"enc": ve["params"], "dec": d.init(kd, z)["params"]}}

    def apply(v, x, noise):
        z = e.apply({"params": v["params"]["enc"]}, x, sample_posterior=True, noise=noise)
        return d.apply({"params": v["params"]["dec"]}, z)

    rng = np.random.default_rng(2)
    r = res // 4
    inputs = ((rng.random((batch, res, res, res, 1)) > 0.7).astype(np.float32),
              rng.standard_normal((batch, r, r, r, 8)))
    note = f"channels {'/'.join(map(str, enc['channels']))}, {res}³ ↔ {r}³×8, XLA conv path"
    return dict(model=Both, apply=apply, inputs=inputs, train=True, tokens=res ** 3, note=note,
                torch=("ss_vae", (enc, dec)))


def _dino_case(name, size):
    def case(tiny, depth, batch, attention):
        _, args = released_args(name)
        if tiny:
            args.update(embed_dim=64, depth=2, num_heads=2)
            if "ffn_hidden_features" in args:
                args["ffn_hidden_features"] = 256
        s = 4 * args["patch_size"] if tiny else size
        model = build("DinoViT", {**args, "img_size": s}, dtype=jnp.bfloat16, attention_impl=attention)
        x = np.random.default_rng(3).random((batch, s, s, 3))
        note = f"{args['embed_dim']} wide, {args['depth']} blocks, {s} px ({(s // model.patch_size) ** 2} patches)"
        return dict(model=model, apply=lambda v, x: model.apply(v, x)["x_prenorm"], inputs=(x,), train=False,
                    tokens=1, note=note, torch=("dino", (args, s)) if name == "dinov2_vitl14_reg" else None)
    return case


CASES = {"ss_flow_L": case_ss_flow, "partpacker_dit": case_partpacker_dit, "ss_vae": case_ss_vae,
         "dinov2_vitl14_reg": _dino_case("dinov2_vitl14_reg", 518), "dinov3_vitl16": _dino_case("dinov3_vitl16", 512),
         "dinov2_vitg14": _dino_case("dinov2_vitg14", 518)}
TRANSFORMERS = ("ss_flow_L", "partpacker_dit", "dinov2_vitl14_reg", "dinov3_vitl16", "dinov2_vitg14")


# ------------------------------------------------------------------------------------------------------ timing


def _time(fn, steps, warmup):
    """Median seconds of ``fn`` (blocked on its result) over ``steps`` calls after ``warmup``."""
    return statistics.median(interleaved({"f": lambda: jax.block_until_ready(fn())}, steps, warmup)["f"])


def run_jax(case, steps, warmup):
    inputs = tuple(jnp.asarray(a, jnp.float32) for a in case["inputs"])
    variables = case["model"].init(jax.random.key(0), *inputs)
    params = variables["params"]
    other = {k: v for k, v in variables.items() if k != "params"}
    forward = case["apply"]
    fwd_flops = count_flops(lambda p, *xs: forward({"params": p, **other}, *xs), params, *inputs)
    if not case["train"]:
        step = jax.jit(lambda p, *xs: forward({"params": p, **other}, *xs))
        compiled = step.lower(params, *inputs).compile()
        seconds = _time(lambda: compiled(params, *inputs), steps, warmup)
        return seconds, fwd_flops, compiled.memory_analysis()
    target = jax.eval_shape(lambda p, *xs: forward({"params": p, **other}, *xs), params, *inputs)
    target = jnp.asarray(np.random.default_rng(9).standard_normal(target.shape), jnp.float32)
    tx = optax.adamw(1e-4, weight_decay=0.01)

    def train_step(p, opt, *xs):
        def loss(p):
            out = forward({"params": p, **other}, *xs).astype(jnp.float32)
            return jnp.mean((out - target) ** 2)

        value, grads = jax.value_and_grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, value

    opt = tx.init(params)
    step = jax.jit(train_step, donate_argnums=(0, 1))
    compiled = step.lower(params, opt, *inputs).compile()
    state = [params, opt]

    def one():
        state[0], state[1], value = compiled(state[0], state[1], *inputs)
        return value

    seconds = _time(one, steps, warmup)
    return seconds, 3 * fwd_flops, compiled.memory_analysis()


def planned_bytes(mem) -> float | None:
    if mem is None:
        return None
    return float(sum(getattr(mem, k, 0) or 0 for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                         "temp_size_in_bytes")))


def device_peak_bytes() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# ------------------------------------------------------------------------------------------------------ torch


def run_torch(spec, inputs, train, steps, warmup, device):
    """The same model as our PyTorch mirror (DINOv2 through transformers), bf16 autocast, on ``device``."""
    import torch

    kind, args = spec
    if kind == "ss_flow":
        from tests.torch_reference import trellis_ss as T

        model = T.SparseStructureFlowModel(**{k: v for k, v in args.items() if k != "use_checkpoint"})
        x, t, c = inputs
        xs = (np.moveaxis(x, -1, 1), t, c)
        call = lambda m, x, t, c: m(x, t, c)  # noqa: E731
    elif kind == "partpacker_dit":
        from tests.torch_reference import partpacker as PP

        model = PP.DiT(**args)
        xs = inputs
        call = lambda m, x, c, t: m(x, c, t)  # noqa: E731
    elif kind == "ss_vae":
        from tests.torch_reference import trellis_ss as T

        enc, dec = args
        model = torch.nn.ModuleList([T.SparseStructureEncoder(**enc), T.SparseStructureDecoder(**dec)])
        x, n = inputs
        xs = (np.moveaxis(x, -1, 1), np.moveaxis(n, -1, 1))
        call = lambda m, x, n: m[1](m[0](x, sample_posterior=True, noise=n))  # noqa: E731
    else:  # DINOv2-L/14 with registers
        import transformers

        dargs, s = args
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=dargs["embed_dim"], num_hidden_layers=dargs["depth"], num_attention_heads=dargs["num_heads"],
            intermediate_size=4 * dargs["embed_dim"], num_register_tokens=dargs.get("num_register_tokens", 4),
            patch_size=14, image_size=s)
        model = transformers.Dinov2WithRegistersModel(cfg)
        xs = (np.moveaxis(inputs[0], -1, 1),)
        call = lambda m, x: m(pixel_values=x).last_hidden_state  # noqa: E731
    model = model.to(device)
    xs = tuple(torch.as_tensor(np.asarray(a, np.float32), device=device) for a in xs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01) if train else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = call(model, *xs)
        if train:
            loss = out.float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    grad = torch.enable_grad() if train else torch.no_grad()
    with grad:
        for _ in range(warmup):
            one()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(steps):
            t = time.perf_counter()
            one()
            ts.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return statistics.median(ts), peak


# ------------------------------------------------------------------------------------------------------ main


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--tiny", action="store_true", help="CPU-size shapes (the default on a CPU backend)")
    ap.add_argument("--depth", type=int, default=4, help="blocks / layers of the flow models (released: 24)")
    ap.add_argument("--batch", type=int, default=None, help="examples per step (default 4; 1 with --tiny)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--torch", action="store_true", help="also time PyTorch on a CPU backend (default: with CUDA only)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_accelerator.md"))
    a = ap.parse_args(argv)
    backend = jax.default_backend()
    tiny = a.tiny or backend == "cpu"
    batch = a.batch or (1 if tiny else 4)
    names = a.models.split(",")
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown --models {unknown}; known: {list(CASES)}")
    device = jax.devices()[0]
    peak, peak_note = chip_peak(device)
    measured = matmul_peak_bf16(512 if tiny else 8192)
    if peak is None:
        peak, peak_note = measured, peak_note + "; MFU against the measured bf16 matmul peak"
    attentions = ("cudnn", "xla") if backend == "gpu" else ("xla",)
    torch_device = None
    try:
        import torch

        if torch.cuda.is_available():
            torch_device = torch.device("cuda")
        elif a.torch:
            torch_device = torch.device("cpu")
    except ImportError:
        pass

    lines = ["# Accelerator benchmark: train steps and encoders in bf16", "",
             f"{device.platform} `{getattr(device, 'device_kind', '?')}` × {jax.device_count()} (timed on one), "
             f"jax {jax.__version__}; {peak_note}; measured bf16 matmul {measured / 1e12:.1f} TFLOP/s; "
             f"batch {batch}, median of {a.steps} after {a.warmup} warm-up" + (" (tiny shapes)" if tiny else ""),
             "", "| case | what | attention / conv | step ms | tokens/s (images/s) | MFU | planned MiB | "
             "device peak MiB | torch ms | torch peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        for attention in (attentions if name in TRANSFORMERS else (None,)):
            case = CASES[name](tiny, a.depth, batch, attention)
            row = f"| {name} | {case['note']} | {attention or 'XLA conv'} | "
            try:
                seconds, flops, mem = run_jax(case, a.steps, a.warmup)
            except Exception as e:  # noqa: BLE001 - one failing case (e.g. cuDNN refuses a shape) keeps the rest
                lines.append(row + f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | | | |")
                print(lines[-1], flush=True)
                continue
            rate = batch * case["tokens"] / seconds
            planned, dpeak = planned_bytes(mem), device_peak_bytes()
            t_ms = t_peak = ""
            if torch_device is not None and case["torch"] is not None and attention in (None, attentions[0]):
                try:
                    ts, tp = run_torch(case["torch"], case["inputs"], case["train"], a.steps, a.warmup, torch_device)
                    t_ms, t_peak = f"{ts * 1e3:.1f}", (f"{tp / 2**20:,.0f}" if tp is not None else "n/a")
                except Exception as e:  # noqa: BLE001
                    t_ms = f"failed: {type(e).__name__}"
            lines.append(row + f"{seconds * 1e3:.1f} | {rate:,.0f} | {flops / seconds / peak:.1%} | "
                         + (f"{planned / 2**20:,.1f}" if planned is not None else "n/a") + " | "
                         + (f"{dpeak / 2**20:,.0f}" if dpeak is not None else "n/a") + f" | {t_ms} | {t_peak} |")
            print(lines[-1], flush=True)
    lines += ["", "Train steps: forward + MSE + backward + AdamW, params fp32, compute bf16; encoders: forward only. "
              "MFU counts a train step as 3 × its analytic forward FLOPs. Device peak: the process's peak so far "
              "(cumulative over the rows above)."]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return lines


if __name__ == "__main__":
    main()
