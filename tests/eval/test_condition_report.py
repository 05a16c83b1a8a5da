"""The condition report (does a per-shape condition steer samples to its shape?) against a scipy reference."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from jaxshape.eval.protocol import condition_report, derangement


def _sphere(r, n, seed, centre=(0.0, 0.0, 0.0)):
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return (r * p / np.linalg.norm(p, axis=1, keepdims=True) + np.asarray(centre)).astype(np.float32)


def _cd_l1(a, b):
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def _f(a, b, tau):
    p = np.mean(cKDTree(b).query(a)[0] <= tau)
    r = np.mean(cKDTree(a).query(b)[0] <= tau)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 7, 50):
        for seed in range(5):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n)) and np.all(p != np.arange(n))
            np.testing.assert_array_equal(p, derangement(n, seed))
    assert not np.array_equal(derangement(50, 0), derangement(50, 1))
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1, 0)


def test_condition_report_matches_a_kdtree_reference():
    radii = (0.1, 0.2, 0.3, 0.4, 0.25)
    refs = np.stack([_sphere(r, 400, i) for i, r in enumerate(radii)])
    # samples follow their condition with an error; the shuffled ones follow another shape's condition
    samples = np.stack([_sphere(r * 1.05, 300, 10 + i) for i, r in enumerate(radii)])
    perm = derangement(len(radii), 3)
    shuffled = np.stack([_sphere(radii[j] * 1.05, 300, 20 + i) for i, j in enumerate(perm)])
    empty = np.zeros(len(radii), bool)
    rep = condition_report(samples, empty, refs, shuffled=shuffled, perm=perm)
    s = len(radii)
    d = np.array([[_cd_l1(samples[i], refs[j]) for j in range(s)] for i in range(s)])
    matched = np.diag(d).mean()
    other = ((d.sum(1) - np.diag(d)) / (s - 1)).mean()
    cd_shuffled = np.mean([_cd_l1(shuffled[i], refs[i]) for i in range(s)])
    np.testing.assert_allclose(rep["cond_cd_matched"], matched, rtol=1e-4)
    np.testing.assert_allclose(rep["cond_cd_other"], other, rtol=1e-4)
    np.testing.assert_allclose(rep["cond_ratio_other"], matched / other, rtol=1e-4)
    np.testing.assert_allclose(rep["cond_cd_shuffled"], cd_shuffled, rtol=1e-4)
    np.testing.assert_allclose(rep["cond_ratio_shuffled"], matched / cd_shuffled, rtol=1e-4)
    assert rep["cond_retrieval"] == float(np.mean(d.argmin(1) == np.arange(s))) == 1.0
    np.testing.assert_allclose(rep["cond_f_matched"], np.mean([_f(samples[i], refs[i], 0.05) for i in range(s)]),
                               atol=1e-6)
    np.testing.assert_allclose(rep["cond_f_other"],
                               np.mean([_f(samples[i], refs[perm[i]], 0.05) for i in range(s)]), atol=1e-6)
    np.testing.assert_allclose(rep["cond_f_shuffled"], np.mean([_f(shuffled[i], refs[i], 0.05) for i in range(s)]),
                               atol=1e-6)
    assert rep["cond_ratio_other"] < 0.3 and rep["cond_empty"] == 0.0
    # a generator that knew only the class: references of the same class against each other / against any other
    labels = np.array([0, 0, 1, 1, -1])
    with_labels = condition_report(samples, empty, refs, perm=perm, labels=labels)
    rr = np.array([[_cd_l1(refs[i], refs[j]) for j in range(s)] for i in range(s)])
    same = np.mean([rr[0, 1], rr[1, 0], rr[2, 3], rr[3, 2]])
    anyo = np.mean([(rr[i].sum() - rr[i, i]) / (s - 1) for i in range(4)])
    np.testing.assert_allclose(with_labels["cond_ratio_class_only"], same / anyo, rtol=1e-4)
    assert "cond_ratio_class_only" not in rep


def test_a_condition_that_is_ignored_scores_one():
    """Samples that do not depend on the condition: the matched and other distances agree (ratio ~ 1) and
    retrieval is at chance."""
    refs = np.stack([_sphere(0.1 + 0.05 * i, 300, i) for i in range(8)])
    samples = np.stack([_sphere(0.25, 300, 100 + i) for i in range(8)])  # the same shape whatever the condition
    rep = condition_report(samples, np.zeros(8, bool), refs, shuffled=samples[::-1].copy())
    np.testing.assert_allclose(rep["cond_ratio_other"], 1.0, rtol=0.05)  # every sample is as far from all
    np.testing.assert_allclose(rep["cond_ratio_shuffled"], 1.0, rtol=0.05)
    with pytest.raises(ValueError, match="one reference per sample"):
        condition_report(samples, np.zeros(8, bool), refs[:4])
