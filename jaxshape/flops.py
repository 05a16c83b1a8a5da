"""Analytic FLOP counts of a traced program: the matmul and convolution work of a model, counted from its jaxpr.

Used by the benchmarks (``experiments/``) to report GFLOP/s and % of the matmul peak, and by users sizing a run
(FLOPs per train step of a released config) without running anything.
"""
from __future__ import annotations

import math
from typing import Callable

import jax

from jaxshape.kernels.conv3d import direct_formulations


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs[i] for i in lb)
    contract = math.prod(lhs[i] for i in lc)
    lfree = math.prod(s for i, s in enumerate(lhs) if i not in lc and i not in lb)
    rfree = math.prod(s for i, s in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * batch * contract * lfree * rfree


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs spec: (out feature dim, in feature dim, spatial...)
    k_spatial = math.prod(rhs[d] for d in dn.rhs_spec[2:])
    return 2.0 * math.prod(out) * k_spatial * rhs[dn.rhs_spec[1]]


def jaxpr_flops(jaxpr) -> float:
    """2 × multiply-adds of every ``dot_general`` and ``conv_general_dilated`` in ``jaxpr``.

    Nested jaxprs are included; a ``scan`` counts ``length`` times; of ``cond`` branches the most expensive one
    counts. Elementwise work, norms and softmax exponentials are not counted.
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        mult = eqn.params.get("length", 1) if name == "scan" else 1
        for key, val in eqn.params.items():
            subs = val if isinstance(val, (tuple, list)) else (val,)
            inner = []
            for s in subs:
                if isinstance(s, jax.extend.core.ClosedJaxpr):
                    inner.append(jaxpr_flops(s.jaxpr))
                elif isinstance(s, jax.extend.core.Jaxpr):
                    inner.append(jaxpr_flops(s))
            if inner:
                total += mult * (max(inner) if name == "cond" and key == "branches" else sum(inner))
    return total


def count_flops(fn: Callable, *args) -> float:
    """Analytic matmul/conv FLOPs of ``fn(*args)``; nothing runs.

    Args:
      fn: a function of arrays (e.g. ``lambda v, x: model.apply(v, x)``, or a whole train step).
      *args: its arguments; ``jax.ShapeDtypeStruct`` leaves are enough.

    Returns:
      The FLOPs of the model's direct formulation: 3-D convs are traced without Winograd (which does 3.4× fewer
      multiplies), so the count is the conventional model FLOPs that PyTorch's direct conv also performs.
    """
    with direct_formulations():
        return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
