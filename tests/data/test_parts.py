"""PartPacker's two volumes (``jaxshape.data.parts``): parts are connected components, touching parts land in
different volumes, odd cycles are contracted at their heaviest edge, and ``prepare --parts`` stores each volume's
encoder inputs (an empty volume as zeros) with the whole object's targets unchanged."""
import dataclasses

import numpy as np
import pytest

from jaxshape.data.mesh_io import TriMesh
from jaxshape.data.parts import connected_parts, contact_graph, pack_two_volumes, two_colour
from jaxshape.data.procedural import CLASSES, generate_shape
from jaxshape.data.targets import PART_KEYS, TargetConfig, mesh_example
from jaxshape.data.vecset import unsigned_distance


def _tet(offset):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64) + offset
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return v, f


def test_connected_parts_numbers_components_by_first_face():
    (v0, f0), (v1, f1) = _tet(0.0), _tet(5.0)
    v = np.concatenate([v1, v0])
    f = np.concatenate([f1 + 0, f0 + 4, f1[:1]])  # component of the first face is 0, whatever its vertices
    np.testing.assert_array_equal(connected_parts(f, len(v)), [0, 0, 0, 0, 1, 1, 1, 1, 0])


def test_two_colour_bipartite_and_odd_cycles():
    # a path 0-1-2-3 is bipartite: alternate colours from the first part of the order, no contraction
    colour, n = two_colour(4, {(0, 1): 0.5, (1, 2): 0.5, (2, 3): 0.5}, np.array([0, 1, 2, 3]))
    assert n == 0 and colour.tolist() == [0, 1, 0, 1]
    # a triangle: its heaviest edge (1, 2) is contracted, so 1 and 2 share a volume opposite 0
    colour, n = two_colour(3, {(0, 1): 0.2, (1, 2): 0.9, (0, 2): 0.3}, np.array([0, 1, 2]))
    assert n == 1 and colour.tolist() == [0, 1, 1]
    # a 5-cycle with a pendant part: one contraction makes the cycle even; the order picks colour 0
    edges = {(0, 1): 0.1, (1, 2): 0.1, (2, 3): 0.8, (3, 4): 0.1, (0, 4): 0.1, (4, 5): 0.5}
    colour, n = two_colour(6, edges, np.array([5, 0, 1, 2, 3, 4]))
    assert n == 1 and colour[5] == 0 and colour[2] == colour[3]
    for (i, j) in edges:
        if {i, j} != {2, 3}:
            assert colour[i] != colour[j], (i, j)
    # parts that touch nothing all go to volume 0
    colour, n = two_colour(3, {}, np.array([2, 1, 0]))
    assert n == 0 and colour.tolist() == [0, 0, 0]


@pytest.mark.parametrize("name", ["table", "chair", "mug", "dumbbell", "box"])
def test_procedural_parts_pack_into_two_volumes_that_do_not_touch(name):
    c = CLASSES.index(name)
    v, f = generate_shape(c, 0, parts=True)
    union_v, _ = generate_shape(c, 0)
    packed = pack_two_volumes(v, f)
    info = packed.info
    expect = {"table": (5, 0, [1, 4]), "chair": (6, 1, [2, 4]), "mug": (2, 0, [1, 1]), "dumbbell": (3, 0, [1, 2]),
              "box": (1, 0, [1, 0])}[name]
    assert (info["num_parts"], info["contractions"], info["parts_per_volume"]) == expect
    # the parts cover the same box as the union; within a volume, no two parts touch unless contracted
    np.testing.assert_allclose(v.min(0), union_v.min(0), atol=1e-9)
    part = connected_parts(f, len(v))
    parts = [(v, f[part == k]) for k in range(info["num_parts"])]
    for (i, j) in contact_graph(parts, rng=np.random.default_rng(1)):
        same = packed.part_volume[i] == packed.part_volume[j]
        assert not same or name == "chair", (name, i, j)
    if name == "table":  # the top (nearest the centre) alone, the four legs in the other volume
        assert packed.part_volume.tolist() == [0, 1, 1, 1, 1]
    if name == "box":
        assert len(packed.volumes[1][1]) == 0


def test_mesh_example_with_parts(tmp_path):
    cfg = dataclasses.replace(TargetConfig.small(16, 1024), targets=("vecset",), parts=True)
    plain = dataclasses.replace(cfg, parts=False)
    v, f = generate_shape(CLASSES.index("table"), 1, parts=True)
    mesh = TriMesh(v, f, {"watertight": True})
    ex, stats = mesh_example(mesh, cfg, mesh_id="table1")
    ref, _ = mesh_example(mesh, plain, mesh_id="table1")
    for k, a in ref.items():  # the whole object's targets are those without parts
        np.testing.assert_array_equal(np.asarray(ex[k]), np.asarray(a), err_msg=k)
    # overlapping closed parts: the sign comes from the winding number, not ray parity
    assert stats["sign_method"] == "winding" and stats["parts_num_parts"] == 5
    assert ex["part_empty"].tolist() == [0, 0]
    for k in PART_KEYS:
        for p in ("_part0", "_part1"):
            assert ex[k + p].shape == ex[k].shape and ex[k + p].dtype == ex[k].dtype, k + p
    # volume 1's points lie on the legs, volume 0's on the top (in the vecset frame of the whole object)
    cp, sp = ex["vecset_center"], float(ex["vecset_scale"])
    part = connected_parts(f, len(v))
    top, legs = (v - cp) * sp, (v - cp) * sp
    d_top = unsigned_distance(top, f[part == 0], ex["pointcloud_part0"], backend="libigl")
    d_legs = unsigned_distance(legs, f[part > 0], ex["pointcloud_part1"], backend="libigl")
    assert d_top.max() < 1e-5 and d_legs.max() < 1e-5
    # a one-part object: the second volume is empty and all zeros
    v1, f1 = generate_shape(CLASSES.index("box"), 0, parts=True)
    ex1, _ = mesh_example(TriMesh(v1, f1, {"watertight": True}), cfg, mesh_id="box0")
    assert ex1["part_empty"].tolist() == [0, 1]
    assert all(not np.asarray(ex1[k + "_part1"]).any() for k in PART_KEYS)
    with pytest.raises(ValueError, match="parts .*needs 'vecset'"):
        TargetConfig(targets=("sparse_structure",), parts=True)


def test_prepared_part_records_read_and_augment_both_volumes_with_the_object(tmp_path):
    """``embedded_records(parts=True)`` (``prepare --parts``) through the grain pipeline: the part keys are read,
    and a mirror + rotation moves both volumes exactly as it moves the whole object (one isometry per example)."""
    from jaxshape.data.pipeline import AugmentConfig, make_dataset
    from jaxshape.data.prepare import embedded_records
    from jaxshape.data.records import RecordSource

    root = embedded_records(6, targets=("vecset",), points=512, parts=True, root=str(tmp_path), workers=1)
    keys = ("pointcloud", "pointcloud_part0", "pointcloud_part1", "normals_part1", "part_empty", "id")
    raw = {str(e["id"]): e for e in RecordSource(root)}
    assert len(raw) == 6 and sum(int(e["part_empty"][1]) for e in raw.values()) == 5  # only the table has parts
    ds = make_dataset(root, 6, keys=keys, shuffle=False, num_epochs=1, process_index=0, process_count=1,
                      augment=AugmentConfig(mirror_p=1.0, rotate="z"))
    batch = next(iter(ds))
    for i, mesh_id in enumerate(batch["id"]):
        e = raw[str(mesh_id)]
        # the isometry of this example, from the whole object's points
        M, *_ = np.linalg.lstsq(e["pointcloud"].astype(np.float64), batch["pointcloud"][i].astype(np.float64),
                                rcond=None)
        np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-5)
        for k in ("pointcloud_part0", "pointcloud_part1", "normals_part1"):
            np.testing.assert_allclose(batch[k][i], e[k] @ M, atol=1e-5, err_msg=k)
        np.testing.assert_array_equal(batch["part_empty"][i], e["part_empty"])
