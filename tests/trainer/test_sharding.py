"""Sharding rules: the divisibility fallback, unknown logical names, config overrides, and a golden listing of
which parameters of every released config shard and which replicate on an abstract 8-device mesh.

Regenerate the golden files after an intended change (then review the diff): ``python -m tests.trainer.test_sharding``
"""
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jaxshape.convert.state_dict import abstract_variables
from jaxshape.models import build
from jaxshape.models.released import RELEASED
from jaxshape.nn import Dense
from jaxshape.trainer import sharding as shd
from tests.utils import ASSETS

GOLDEN = ASSETS / "sharding"
MESH = {"data": 1, "fsdp": 8}  # an 8-GPU node, FSDP over all of it (docs/training.md)


def _boxed(module, x_shape):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x_shape)))["params"]


def test_divisibility_fallback_and_rules():
    tree = _boxed(Dense(24, axes=("embed", "mlp")), (2, 16))
    specs = shd.partition_specs(tree, {"data": 2, "fsdp": 4})
    assert specs == {"kernel": P("fsdp", None), "bias": P(None)}  # embed 16 / 4 shards; mlp replicated
    specs = shd.partition_specs(tree, {"data": 1, "fsdp": 3})
    assert specs["kernel"] == P(None, None)  # 16 is not divisible by 3: replicated, not an error
    rules = shd.logical_rules((("mlp", "fsdp"), ("embed", None)))  # override from config.mesh.rules
    assert shd.partition_specs(tree, {"data": 1, "fsdp": 4}, rules) == {"kernel": P(None, "fsdp"),
                                                                        "bias": P("fsdp")}
    rep, total = shd.replicated_bytes(tree, {"data": 1, "fsdp": 4})
    assert (rep, total) == (24 * 4, (16 * 24 + 24) * 4)
    with pytest.raises(ValueError, match=r"mesh.rules: 'mlp' maps to unknown mesh axes \['tensor'\]"):
        shd.logical_rules((("mlp", "tensor"),))


def test_unknown_logical_name_is_an_error_naming_the_parameter():
    tree = _boxed(Dense(8, axes=("embd", "mlp")), (1, 4))  # a typo of "embed"
    with pytest.raises(ValueError, match=r"without a sharding rule: 'embd' on \['kernel'\]"):
        shd.partition_specs(tree, MESH)
    with pytest.raises(ValueError, match="without a sharding rule"):
        shd.shardings_from_boxed(tree, shd.make_mesh(1, 8))


def golden_text(name: str) -> str:
    """Every parameter of the released ``name``: path, shape, logical axes and its PartitionSpec on :data:`MESH`,
    and the bytes that stay replicated."""
    boxed = abstract_variables(build(name), unbox=False)["params"]
    specs = shd.partition_specs(boxed, MESH)
    rows = []
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    for (path, box), spec in zip(leaves, flat_specs):
        shape = tuple(box.value.shape)
        rows.append(f"{jax.tree_util.keystr(path)}\t{shape}\t{tuple(box.names)}\t{tuple(spec)}")
    rep, total = shd.replicated_bytes(boxed, MESH)
    head = [f"# {name} on a mesh {MESH}: parameter path, shape, logical axes, PartitionSpec",
            f"# {len(rows)} arrays, {total:,} bytes; replicated: {rep:,} bytes ({100 * rep / total:.3f}%)"]
    return "\n".join(head + rows) + "\n"


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_sharding_matches_golden(name):
    assert golden_text(name) == (GOLDEN / f"{name}.txt").read_text()


def test_released_configs_replicate_under_one_percent():
    """FSDP is only worth it if almost everything shards: at most 1% of any released model's bytes replicate."""
    for name in RELEASED:
        rep, total = shd.replicated_bytes(abstract_variables(build(name), unbox=False)["params"], MESH)
        assert rep / total < 0.01, (name, rep, total)


if __name__ == "__main__":
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for n in sorted(RELEASED):
        (GOLDEN / f"{n}.txt").write_text(golden_text(n))
        print(f"wrote {GOLDEN / f'{n}.txt'}", file=sys.stderr)
