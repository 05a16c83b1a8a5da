"""Euler samplers with classifier-free guidance for both conventions.

The time grid is built on the host in float64 (as upstream, with numpy); each step runs one jitted update.

TRELLIS: ``t_i = r s / (1 + (r − 1) s)``, ``s = linspace(1, 0, steps + 1)`` (``rescale_t = r``); guidance
``v = (1 + w) v_c − w v_u`` applied iff ``lo ≤ t ≤ hi`` (inclusive, on the rescaled float64 t); model time 1000·t.
PartPacker: ``σ = s u / (1 + (s − 1) u)``, ``u = linspace(1, 0, steps + 1)``; ``v = v_u + w (v_c − v_u)``;
model time ``float32(1000 σ)``. Both: ``x ← x − (t_i − t_{i+1}) v``.
"""
from __future__ import annotations

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


def euler_sample(velocity_fn: Callable, noise: jax.Array, cond, uncond, times: Sequence[float], *,
                 guidance: float = 0.0, convention: str = "trellis",
                 guidance_interval: Optional[tuple[float, float]] = None,
                 progress: Optional[Callable[[int], None]] = None) -> jax.Array:
    """Integrate from ``noise`` at ``times[0]`` to ``times[-1]``.

    ``velocity_fn(x, model_t [B] fp32, cond) -> v`` (model_t = 1000·t). ``cond``/``uncond`` are pytrees with a
    leading batch axis matching ``noise`` (or batch 1: repeated). ``convention``: ``"trellis"`` guidance
    ``(1 + w) v_c − w v_u``, ``"partpacker"`` guidance ``v_u + w (v_c − v_u)``; ``guidance = 0`` (TRELLIS) or
    ``1`` (PartPacker) is the conditional prediction alone. ``guidance_interval`` (TRELLIS) limits CFG to
    ``lo ≤ t ≤ hi``. ``progress(1)`` is called after each step (e.g. a tqdm bar's ``update``).
    """
    if convention not in ("trellis", "partpacker"):
        raise ValueError(f"convention must be 'trellis' or 'partpacker', got {convention!r}")
    b = noise.shape[0]

    def rep(tree):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:]) if a.shape[0] == 1 else a, tree)

    cond, uncond = rep(cond), rep(uncond)

    @jax.jit
    def cond_step(x, model_t, dt):
        v = velocity_fn(x, jnp.full((b,), model_t, jnp.float32), cond)
        return x - dt * v

    @jax.jit
    def cfg_step(x, model_t, dt, w):
        tt = jnp.full((2 * b,), model_t, jnp.float32)
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        v = velocity_fn(jnp.concatenate([x, x]), tt, both)
        vc, vu = v[:b], v[b:]
        if convention == "trellis":
            v = (1 + w) * vc - w * vu
        else:
            v = vu + w * (vc - vu)
        return x - dt * v

    no_guidance = 0.0 if convention == "trellis" else 1.0
    x = noise
    for t, t_next in zip(times[:-1], times[1:]):
        active = guidance != no_guidance
        if guidance_interval is not None:
            active = active and guidance_interval[0] <= t <= guidance_interval[1]
        dt = np.float32(t - t_next)  # float64 difference rounded once, as upstream's scalar
        model_t = np.float32(1000.0 * t)  # formed in float64, like upstream's torch.tensor([1000 * t])
        if active:
            x = cfg_step(x, model_t, dt, np.float32(guidance))
        else:
            x = cond_step(x, model_t, dt)
        if progress is not None:
            progress(1)
    return x
