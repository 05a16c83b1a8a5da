"""Device mesh and the one place where logical axis names map to mesh axes.

Mesh axes ``("data", "fsdp")``: batches are split over both; parameters (and optimiser state, EMA) are sharded
FSDP-style over ``"fsdp"`` along their ``embed`` / ``cond`` / ``conv_out`` axis. A dimension that the mesh axes
do not divide evenly is replicated instead (small heads such as a 1-channel output conv).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")

# logical name -> mesh axes (None = replicated). Names not listed are replicated.
LOGICAL_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("cond", "fsdp"),
    ("conv_out", "fsdp"),
    ("points", None),
    ("latent", None),
    ("mlp", None),
    ("heads", None),
    ("head_dim", None),
    ("mod", None),
    ("layers", None),
    ("norm", None),
    ("patch", None),
    ("freq", None),
    ("embed_out", None),
    ("conv_k", None),
    ("conv_in", None),
)


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


def _mesh_axes_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> P:
    table = dict(rules)
    used: set = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def shardings_from_boxed(tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a pytree whose leaves may be ``nn.LogicallyPartitioned`` (abstract or concrete);
    unannotated leaves are replicated."""

    def leaf_sharding(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return NamedSharding(mesh, _mesh_axes_for(x.names, x.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf_sharding, tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


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
