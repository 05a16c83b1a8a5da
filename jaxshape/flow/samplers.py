"""Euler samplers with classifier-free guidance for both conventions.

The time grid is built on the host in float64 (as upstream, with numpy); each step runs one jitted update.

TRELLIS: ``t_i = r s / (1 + (r − 1) s)``, ``s = linspace(1, 0, steps + 1)`` (``rescale_t = r``); guidance
``v = (1 + w) v_c − w v_u`` applied iff ``lo ≤ t ≤ hi`` (inclusive, on the rescaled float64 t); model time 1000·t.
PartPacker: ``σ = s u / (1 + (s − 1) u)``, ``u = linspace(1, 0, steps + 1)``; ``v = v_u + w (v_c − v_u)``;
model time ``float32(1000 σ)``. TRELLIS.2 (``"trellis2"``): TRELLIS's grid and interval, guidance
``v = w v_c + (1 − w) v_u`` (w = 1: the conditional prediction alone) with optional CFG rescale: the guided
x̂₀ is rescaled to the conditional x̂₀'s standard deviation (unbiased, per example) and mixed by ``guidance_rescale``.
All: ``x ← x − (t_i − t_{i+1}) v``.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def trellis_timesteps(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    s = np.linspace(1, 0, steps + 1)
    return rescale_t * s / (1 + (rescale_t - 1) * s)


def partpacker_sigmas(steps: int, shift: float = 3.0) -> np.ndarray:
    u = np.linspace(1, 0, steps + 1)
    return shift * u / (1 + (shift - 1) * u)


SIGMA_MIN = 1e-5  # TRELLIS / TRELLIS.2's FlowEulerSampler(sigma_min)


def _guided(v, b, convention, w):
    vc, vu = v[:b], v[b:]
    if convention == "trellis":
        return (1 + w) * vc - w * vu
    if convention == "trellis2":
        return w * vc + (1 - w) * vu
    return vu + w * (vc - vu)


def _cfg_rescale(x, t, v_cond, v_cfg, rescale, sigma_min=SIGMA_MIN):
    """TRELLIS.2's CFG rescale: x̂₀ = (1 − σ) x − (σ + (1 − σ) t) v for both predictions, the guided one scaled to
    the conditional one's std (over all but the batch axis, ``ddof=1`` as torch's ``std``), mixed by ``rescale``,
    mapped back to a velocity."""
    a = sigma_min + (1 - sigma_min) * t
    x0_pos = (1 - sigma_min) * x - a * v_cond
    x0_cfg = (1 - sigma_min) * x - a * v_cfg
    axes = tuple(range(1, x.ndim))
    ratio = jnp.std(x0_pos, axis=axes, keepdims=True, ddof=1) / jnp.std(x0_cfg, axis=axes, keepdims=True, ddof=1)
    x0 = rescale * (x0_cfg * ratio) + (1 - rescale) * x0_cfg
    return ((1 - sigma_min) * x - x0) / a


@functools.partial(jax.jit, static_argnames=("velocity_fn",))
def _cond_step(velocity_fn, params, x, model_t, dt, cond):
    v = velocity_fn(params, x, jnp.full((x.shape[0],), model_t, jnp.float32), cond)
    return x - dt * v


@functools.partial(jax.jit, static_argnames=("velocity_fn", "convention", "rescale"))
def _cfg_step(velocity_fn, convention, params, x, model_t, dt, w, cond, uncond, t=0.0, rescale=0.0):
    b = x.shape[0]
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
    v = velocity_fn(params, jnp.concatenate([x, x]), jnp.full((2 * b,), model_t, jnp.float32), both)
    guided = _guided(v, b, convention, w)
    if rescale > 0:
        guided = _cfg_rescale(x, t, v[:b], guided, rescale)
    return x - dt * guided


def euler_sample(velocity_fn: Callable, noise: jax.Array, cond, uncond, times: Sequence[float], *,
                 guidance: float = 0.0, convention: str = "trellis",
                 guidance_interval: Optional[tuple[float, float]] = None,
                 progress: Optional[Callable[[int], None]] = None, params=None,
                 step_conds: Optional[Sequence] = None, guidance_rescale: float = 0.0) -> jax.Array:
    """Integrate from ``noise`` at ``times[0]`` to ``times[-1]``.

    ``velocity_fn(x, model_t [B] fp32, cond) -> v`` (model_t = 1000·t), or with ``params`` given
    ``velocity_fn(params, x, model_t, cond)``: then the jitted steps take ``params`` as an argument (not a baked-in
    constant) and are compiled once per ``velocity_fn`` object and shape, across calls. ``cond``/``uncond`` are
    pytrees with a leading batch axis matching ``noise`` (or batch 1: repeated). ``convention``: ``"trellis"``
    guidance ``(1 + w) v_c − w v_u``, ``"partpacker"`` guidance ``v_u + w (v_c − v_u)``; ``guidance = 0``
    (TRELLIS) or ``1`` (PartPacker) is the conditional prediction alone. ``guidance_interval`` (TRELLIS) limits CFG
    to ``lo ≤ t ≤ hi``. ``progress(1)`` is called after each step (e.g. a tqdm bar's ``update``).
    ``step_conds`` (one condition per step, each shaped like ``cond``) replaces ``cond`` step by step (TRELLIS's
    stochastic multi-image mode). ``"trellis2"``: guidance ``w v_c + (1 − w) v_u`` (``guidance = 1``: conditional
    alone), ``guidance_rescale`` its CFG rescale.
    """
    if convention not in ("trellis", "partpacker", "trellis2"):
        raise ValueError(f"convention must be 'trellis', 'partpacker' or 'trellis2', got {convention!r}")
    if guidance_rescale and convention != "trellis2":
        raise ValueError("guidance_rescale is TRELLIS.2's (convention='trellis2')")
    b = noise.shape[0]

    def rep(tree):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:]) if a.shape[0] == 1 else a, tree)

    cond, uncond = rep(cond), rep(uncond)
    if step_conds is not None and len(step_conds) != len(times) - 1:
        raise ValueError(f"step_conds must give one condition per step ({len(times) - 1}), got {len(step_conds)}")
    if params is None:
        fn = _ClosedVelocity(velocity_fn)
    else:
        fn = velocity_fn

    no_guidance = 0.0 if convention == "trellis" else 1.0
    rescale = float(guidance_rescale)
    x = noise
    for k, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        c = cond if step_conds is None else rep(step_conds[k])
        active = guidance != no_guidance
        if guidance_interval is not None:
            active = active and guidance_interval[0] <= t <= guidance_interval[1]
        dt = np.float32(t - t_next)  # float64 difference rounded once, as upstream's scalar
        model_t = np.float32(1000.0 * t)  # formed in float64, like upstream's torch.tensor([1000 * t])
        if active:
            x = _cfg_step(fn, convention, params, x, model_t, dt, np.float32(guidance), c, uncond, np.float32(t),
                          rescale=rescale)
        else:
            x = _cond_step(fn, params, x, model_t, dt, c)
        if progress is not None:
            progress(1)
    return x


class _ClosedVelocity:
    """``velocity_fn(x, t, c)`` as ``(params, x, t, c)`` (params unused), hashable by the wrapped function."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, params, x, t, c):
        return self.fn(x, t, c)

    def __hash__(self):
        return hash(self.fn)

    def __eq__(self, other):
        return isinstance(other, _ClosedVelocity) and other.fn is self.fn
