"""Flow objectives, schedules and samplers: endpoints, signs, derivatives, upstream constants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshape import flow


def test_trellis_interpolant_endpoints_and_velocity():
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (2, 4, 4, 4, 8)), jax.random.normal(k2, (2, 4, 4, 4, 8))
    s = flow.schedules.SIGMA_MIN
    xt0, target = flow.trellis_noising(x0, eps, jnp.zeros(2))
    np.testing.assert_allclose(xt0, x0 + s * eps, atol=1e-6)
    xt1, _ = flow.trellis_noising(x0, eps, jnp.ones(2))
    np.testing.assert_allclose(xt1, eps, atol=1e-6)
    np.testing.assert_allclose(target, (1 - s) * eps - x0, atol=1e-6)
    # target = d x_t / d t (the interpolant is linear in t)
    np.testing.assert_allclose(xt1 - xt0, target, atol=1e-5)


def test_partpacker_interpolant_endpoints_and_velocity():
    k1, k2 = jax.random.split(jax.random.key(1))
    x0, eps = jax.random.normal(k1, (3, 16, 4)), jax.random.normal(k2, (3, 16, 4))
    xs0, target = flow.partpacker_noising(x0, eps, jnp.zeros(3))
    xs1, _ = flow.partpacker_noising(x0, eps, jnp.ones(3))
    np.testing.assert_array_equal(xs0, x0)
    np.testing.assert_array_equal(xs1, eps)
    np.testing.assert_allclose(xs1 - xs0, target, atol=1e-6)


def test_partpacker_sigma_table_and_sampling():
    sig, ts = flow.partpacker_sigma_table(3.0)
    assert sig[0] == 1.0 and ts[0] == 1000.0
    np.testing.assert_allclose(sig[-1], 3 * 0.001 / (1 + 2 * 0.001), rtol=1e-6)
    assert np.all(np.diff(sig) < 0)
    s, t = flow.sample_sigma_partpacker(jax.random.key(0), 20000, 1.0, 1.0, 3.0)
    np.testing.assert_allclose(np.asarray(t), 1000 * np.asarray(s), rtol=1e-6)
    # logit mean +1 with the reversed table and shift 3 -> median sigma ~ 0.525 (spec §2.4)
    assert abs(float(np.median(np.asarray(s))) - 0.525) < 0.01


def test_trellis_t_sampling_and_sampler_grid():
    t = np.asarray(flow.sample_t_trellis(jax.random.key(0), 20000, "logitNormal", 1.0, 1.0))
    assert abs(np.median(t) - 1 / (1 + np.exp(-1))) < 0.01 and t.min() > 0 and t.max() < 1
    u = np.asarray(flow.sample_t_trellis(jax.random.key(0), 20000, "uniform"))
    assert abs(u.mean() - 0.5) < 0.01
    grid = flow.trellis_timesteps(25, 3.0)
    np.testing.assert_allclose(grid[:4], [1.0, 0.9863, 0.9718, 0.9565], atol=5e-5)
    assert ((grid[:-1] >= 0.5) & (grid[:-1] <= 1.0)).sum() == 19  # CFG steps for interval [0.5, 1]
    assert flow.trellis_timesteps(12, 3.0)[9] == 0.5  # the inclusive boundary case of the spec
    with pytest.raises(ValueError, match="t_schedule"):
        flow.sample_t_trellis(jax.random.key(0), 2, "cosine")


@pytest.mark.parametrize("convention", ["trellis", "partpacker"])
def test_euler_sampler_is_exact_on_straight_paths(convention):
    """With the true (constant) velocity of one data point, Euler integration lands on it exactly."""
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
    eps = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 3)), jnp.float32)
    s = flow.schedules.SIGMA_MIN
    if convention == "trellis":
        v = (1 - s) * eps - x0
        times, g, expect = flow.trellis_timesteps(7, 3.0), 3.0, x0 + s * eps
    else:
        v = eps - x0
        times, g, expect = flow.partpacker_sigmas(7, 3.0), 5.0, x0
    calls = []

    def velocity(x, t, c):
        calls.append(x.shape[0])
        return jnp.concatenate([v] * (x.shape[0] // v.shape[0]))

    out = flow.euler_sample(velocity, eps, jnp.zeros((1, 1)), jnp.zeros((1, 1)), times, guidance=g,
                            convention=convention)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expect), atol=2e-5)
    assert calls and all(c == 4 for c in calls)  # guided steps batch [cond; uncond]


def test_guidance_formulas_and_interval():
    vc, vu = 3.0, 1.0
    # trellis: (1 + w) vc - w vu; partpacker: vu + w (vc - vu)

    def run(convention, w, interval=None):
        def velocity(x, t, c):
            return jnp.where(c[:, :1, None] > 0, vc, vu) * jnp.ones_like(x)

        out = flow.euler_sample(velocity, jnp.zeros((1, 1, 1)), jnp.ones((1, 1)), jnp.zeros((1, 1)),
                                np.array([1.0, 0.0]), guidance=w, convention=convention,
                                guidance_interval=interval)
        return -float(out[0, 0, 0])  # x1 - x0 = v for a single step of size 1

    assert run("trellis", 2.0) == pytest.approx(3 * vc - 2 * vu)
    assert run("partpacker", 2.0) == pytest.approx(vu + 2 * (vc - vu))
    assert run("trellis", 2.0, interval=(0.0, 0.5)) == pytest.approx(vc)  # t = 1 outside [0, 0.5]
    assert run("trellis", 2.0, interval=(0.5, 1.0)) == pytest.approx(3 * vc - 2 * vu)  # inclusive bound


def test_cfg_dropout():
    c = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(flow.cfg_dropout(jax.random.key(0), c, jnp.zeros((1, 2)), 0.0), c)
    np.testing.assert_array_equal(flow.cfg_dropout(jax.random.key(0), c, jnp.zeros((1, 2)), 1.0), 0 * c)
    np.testing.assert_allclose(float(flow.mse(jnp.array([1.0, 3.0]), jnp.zeros(2))), 5.0)
