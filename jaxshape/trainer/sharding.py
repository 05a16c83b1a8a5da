"""Device mesh and the one place where logical axis names map to mesh axes.

Mesh axes ``("data", "fsdp")``: batches are split over both; parameters (and optimiser state, EMA) are sharded
FSDP-style over ``"fsdp"`` along their ``embed`` / ``cond`` / ``conv_out`` axis. A dimension that the mesh axes
do not divide evenly is replicated instead (small heads such as a 1-channel output conv). The logical names are
``jaxshape.nn.axes``; every one has a rule here, and a parameter with a name that has none is an error.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxshape.nn import axes

MESH_AXES = ("data", "fsdp")

# logical axis name (jaxshape.nn.axes) -> mesh axes (None = replicated): every name a parameter may carry is listed;
# an unlisted name is an error at state creation. `config.mesh.rules` overrides entries.
LOGICAL_RULES: tuple = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.EMBED, "fsdp"),
    (axes.COND, "fsdp"),
    (axes.CONV_OUT, "fsdp"),
    (axes.POINTS, None),
    (axes.LATENT, None),
    (axes.MLP, None),
    (axes.HEADS, None),
    (axes.HEAD_DIM, None),
    (axes.MOD, None),
    (axes.LAYERS, None),
    (axes.NORM, None),
    (axes.PATCH, None),
    (axes.FREQ, None),
    (axes.EMBED_OUT, None),
    (axes.CONV_K, None),
    (axes.CONV_IN, None),
)
assert {name for name, _ in LOGICAL_RULES} == set(axes.ALL)


def logical_rules(overrides=()) -> tuple:
    """:data:`LOGICAL_RULES` with ``overrides`` (``(name, mesh axes or None)`` pairs, e.g. ``config.mesh.rules``)
    replacing or adding entries; mesh axes must be names of :data:`MESH_AXES`."""
    table = dict(LOGICAL_RULES)
    for entry in overrides:
        if len(entry) != 2:
            raise ValueError(f"mesh.rules entries must be (logical name, mesh axes) pairs, got {entry!r}")
        name, target = entry
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        bad = [t for t in targets if t not in MESH_AXES]
        if bad:
            raise ValueError(f"mesh.rules: {name!r} maps to unknown mesh axes {bad}; the mesh axes are {MESH_AXES}")
        table[name] = target if target is None or isinstance(target, str) else tuple(target)
    return tuple(table.items())


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh with Auto axes (what linen's logical partitioning needs). ``-1`` = the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or n % known:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not divide the {n} available devices")
    sizes = [n // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != n:
        raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} != {n} devices")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _mesh_axes_for(names: Sequence[str | None], shape: Sequence[int], mesh_shape: dict, table: dict) -> P:
    used: set = set()
    spec = []
    for name, dim in zip(names, shape):
        target = table[name] if name is not None else None
        if target is None:
            spec.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(a for a in targets if a not in used and mesh_shape[a] > 1)
        size = math.prod(mesh_shape[a] for a in targets)
        if not targets or dim % size:
            spec.append(None)
            continue
        used.update(targets)
        spec.append(targets[0] if len(targets) == 1 else targets)
    return P(*spec)


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def partition_specs(tree: Any, mesh_shape: dict, rules=LOGICAL_RULES) -> Any:
    """PartitionSpecs for a pytree whose leaves may be ``nn.LogicallyPartitioned`` (abstract or concrete), on a
    mesh of ``mesh_shape`` (``{axis: size}``; a real or an abstract mesh). A dimension the mesh axes do not divide
    is replicated; unannotated leaves are replicated. A logical name without a rule raises, naming the parameters
    that carry it."""
    table = dict(rules)
    unknown: dict = {}

    def check(path, x):
        for name in x.names:
            if name is not None and name not in table:
                unknown.setdefault(name, []).append(jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(lambda p, x: check(p, x) if _is_boxed(x) else None, tree, is_leaf=_is_boxed)
    if unknown:
        listing = "; ".join(f"{n!r} on {', '.join(ps[:3])}{' ...' if len(ps) > 3 else ''}" for n, ps in unknown.items())
        raise ValueError(f"logical axis name(s) without a sharding rule: {listing}. Add them to jaxshape.nn.axes and "
                         f"LOGICAL_RULES, or map them with config.mesh.rules")

    def leaf_spec(x):
        if _is_boxed(x):
            return _mesh_axes_for(x.names, x.value.shape, mesh_shape, table)
        return P()

    return jax.tree.map(leaf_spec, tree, is_leaf=_is_boxed)


def shardings_from_boxed(tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings of :func:`partition_specs` on ``mesh``."""
    specs = partition_specs(tree, dict(mesh.shape), rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def replicated_bytes(tree: Any, mesh_shape: dict, rules=LOGICAL_RULES) -> tuple[int, int]:
    """``(bytes of fully replicated leaves, total bytes)`` of a boxed (abstract) pytree on a mesh of that shape."""
    specs = partition_specs(tree, mesh_shape, rules)
    values = jax.tree.map(lambda x: x.value if _is_boxed(x) else x, tree, is_leaf=_is_boxed)
    rep = tot = 0
    for v, s in zip(jax.tree.leaves(values), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
        n = math.prod(v.shape) * np.dtype(v.dtype).itemsize
        tot += n
        rep += n if all(a is None for a in s) else 0
    return rep, tot


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """The batch axis split over every mesh axis; the other axes replicated."""
    return NamedSharding(mesh, P(MESH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a host batch (this process's share of the global batch) on the mesh, batch-sharded."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array) and len(v.sharding.device_set) == mesh.size:
            out[k] = v  # already placed (prefetched by the data iterator)
            continue
        v = np.asarray(v)
        sharding = batch_sharding(mesh, v.ndim)
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out
