"""Conditioning views: TRELLIS's camera distribution, PNG storage, errors, and the OpenGL renderer (skipped without
moderngl / a system EGL)."""
import math
import sys

import numpy as np
import pytest

from jaxshape.data import render
from jaxshape.data.mesh_io import MeshError, TriMesh
from jaxshape.data.render import conditioning_cameras, decode_png, encode_png, sphere_hammersley

RHO = math.sqrt(3) / 2  # bounding sphere of the [-0.5, 0.5]^3 cube


def _project(points, cam):
    """NDC x, y and the camera-space depth of world points (independent of the renderer's code)."""
    c2w = np.asarray(cam["c2w"])
    R, t = c2w[:3, :3], c2w[:3, 3]
    pc = (np.asarray(points) - t) @ R  # = R^T (p - t)
    f = 1.0 / math.tan(cam["fov"] / 2)
    return pc[:, 0] / -pc[:, 2] * f, pc[:, 1] / -pc[:, 2] * f, -pc[:, 2]


# ------------------------------------------------------------------------------------------------------- cameras


def test_cameras_deterministic_for_a_seed():
    a = conditioning_cameras(24, np.random.default_rng(7))
    b = conditioning_cameras(24, np.random.default_rng(7))
    c = conditioning_cameras(24, np.random.default_rng(8))
    assert len(a) == 24
    for x, y in zip(a, b):
        assert set(x) == {"yaw", "pitch", "radius", "fov", "c2w"}
        assert (x["yaw"], x["pitch"], x["radius"], x["fov"]) == (y["yaw"], y["pitch"], y["radius"], y["fov"])
        np.testing.assert_array_equal(x["c2w"], y["c2w"])
    assert any(x["radius"] != z["radius"] for x, z in zip(a, c))


def test_hammersley_hand_computed():
    # n = 4, no offset: u = i/4, v = radical inverse base 2 of i (0, .5, .25, .75)
    yaw, pitch = sphere_hammersley(0, 4)  # u=0 -> 2u = 0 -> pitch = acos(1) - pi/2
    assert yaw == 0.0 and pitch == pytest.approx(-math.pi / 2)
    yaw, pitch = sphere_hammersley(1, 4)  # u=1/4 (not < 1/4) -> 2/3 * 1/4 + 1/3 = 1/2 -> pitch 0; v = 1/2
    assert yaw == pytest.approx(math.pi) and pitch == pytest.approx(0.0, abs=1e-12)
    yaw, pitch = sphere_hammersley(3, 4)  # u=3/4 -> 5/6 -> acos(1 - 5/3) - pi/2; v = 3/4
    assert yaw == pytest.approx(1.5 * math.pi) and pitch == pytest.approx(math.acos(-2 / 3) - math.pi / 2)
    # offset (0.5, 0.25), i = 2: u = 2/4 + 0.5/4 = 5/8 -> 2/3 * 5/8 + 1/3 = 3/4 -> acos(-1/2) - pi/2 = pi/6;
    # v = 1/4 + 1/4 = 1/2 -> yaw = pi
    yaw, pitch = sphere_hammersley(2, 4, (0.5, 0.25))
    assert yaw == pytest.approx(math.pi) and pitch == pytest.approx(math.pi / 6)
    # i = 0 with an offset below 1/4 in u: u = 0.1/4 -> 2u = 0.05 -> acos(0.9) - pi/2; v = 0.3
    yaw, pitch = sphere_hammersley(0, 4, (0.1, 0.3))
    assert yaw == pytest.approx(0.6 * math.pi) and pitch == pytest.approx(math.acos(0.9) - math.pi / 2)
    # base-2 radical inverse of 5 = 101b -> 0.101b = 0.625; of 6 = 110b -> 0.011b = 0.375
    assert sphere_hammersley(5, 8)[0] == pytest.approx(0.625 * 2 * math.pi)
    assert sphere_hammersley(6, 8)[0] == pytest.approx(0.375 * 2 * math.pi)


def test_cameras_use_one_offset_then_k_draws():
    """The draw order is offset (2 uniforms) then the k's: yaw/pitch of the cameras follow from the offset."""
    n = 6
    cams = conditioning_cameras(n, np.random.default_rng(3))
    g = np.random.default_rng(3)
    off = g.random(2)
    r_min, r_max = RHO / math.sin(math.radians(35)), RHO / math.sin(math.radians(5))
    ks = g.uniform(1 / r_max ** 2, 1 / r_min ** 2, n)
    for i, c in enumerate(cams):
        y, p = sphere_hammersley(i, n, off)
        assert (c["yaw"], c["pitch"]) == (y, p)
        assert c["radius"] == pytest.approx(1 / math.sqrt(ks[i]), rel=1e-12)


def test_fov_range_and_radius_relation():
    cams = [c for s in range(20) for c in conditioning_cameras(24, np.random.default_rng(s))]
    fov = np.array([c["fov"] for c in cams])
    r = np.array([c["radius"] for c in cams])
    assert fov.min() >= math.radians(10) - 1e-12 and fov.max() <= math.radians(70) + 1e-12
    np.testing.assert_allclose(r * np.sin(fov / 2), RHO, rtol=1e-12)  # fov = 2 asin(rho / r)
    # k = 1 / r^2 is uniform on [1/r_max^2, 1/r_min^2]: mean and spread of a uniform
    k = 1 / r ** 2
    lo, hi = (math.sin(math.radians(5)) / RHO) ** 2, (math.sin(math.radians(35)) / RHO) ** 2
    assert k.min() >= lo - 1e-12 and k.max() <= hi + 1e-12
    assert abs(k.mean() - (lo + hi) / 2) < 0.05 * (hi - lo)
    assert abs(k.std() - (hi - lo) / math.sqrt(12)) < 0.05 * (hi - lo)
    # a quarter of the views from below the equator (TRELLIS's u remapping)
    pitch = np.array([c["pitch"] for c in cams])
    assert abs((pitch < 0).mean() - 0.25) < 0.02


def test_camera_matrix_convention():
    cams = conditioning_cameras(24, np.random.default_rng(0))
    for c in cams:
        m = np.asarray(c["c2w"])
        R, t = m[:3, :3], m[:3, 3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
        y, p, r = c["yaw"], c["pitch"], c["radius"]
        np.testing.assert_allclose(t, r * np.array([math.cos(y) * math.cos(p), math.sin(y) * math.cos(p),
                                                    math.sin(p)]), atol=1e-12)
        np.testing.assert_allclose(-R[:, 2], -t / np.linalg.norm(t), atol=1e-12)  # looks at the origin
        assert R[2, 0] == pytest.approx(0.0, abs=1e-12)  # image x stays horizontal (TRACK_TO, up = +z)
        assert R[2, 1] >= 0  # image up points to world +z
    # camera on +x: right = +y, up = +z, back = +x (z-up object frame, OpenGL camera axes)
    m = render.look_at((2.0, 0.0, 0.0))
    np.testing.assert_allclose(m[:3, :3], [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_bounding_sphere_projects_inside_every_image():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(20000, 3))
    sphere = RHO * d / np.linalg.norm(d, axis=1, keepdims=True)
    corners = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])
    for s in range(5):
        for c in conditioning_cameras(24, np.random.default_rng(s)):
            x, y, depth = _project(np.concatenate([sphere, corners]), c)
            assert depth.min() > 0
            assert np.abs(x).max() <= 1 + 1e-9 and np.abs(y).max() <= 1 + 1e-9
            # the sphere is inscribed: its outline touches the frame (fov = 2 asin(rho / r))
            assert np.abs(x[:len(sphere)]).max() > 0.98


def test_num_views_validation():
    with pytest.raises(ValueError, match="num_views"):
        conditioning_cameras(0, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------- PNG / errors


def test_png_round_trip_exact():
    rgba = np.random.default_rng(0).integers(0, 256, (37, 23, 4), dtype=np.uint8)
    data = encode_png(rgba)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_png(data), rgba)
    rgb = rgba[..., :3]
    out = decode_png(encode_png(rgb))
    np.testing.assert_array_equal(out[..., :3], rgb)
    assert (out[..., 3] == 255).all()
    with pytest.raises(ValueError):
        encode_png(rgba.astype(np.float32))


def test_empty_and_degenerate_meshes_raise_clear_errors():
    import trimesh

    cams = conditioning_cameras(1, np.random.default_rng(0))
    empty = trimesh.Trimesh(np.random.rand(5, 3), np.zeros((0, 3), np.int64), process=False)
    with pytest.raises(ValueError, match=r"'my_mesh'.*no triangles.*at least one face") as e:
        render.render_views(empty, cams, 32, name="my_mesh")
    assert isinstance(e.value, MeshError) and e.value.reason == "no_faces"
    with pytest.raises(ValueError, match="no triangles"):
        render.render_views(trimesh.Scene(), cams, 32)
    flat = TriMesh(np.zeros((3, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"'<TriMesh>' is degenerate.*non-zero area"):
        render.render_views(flat, cams, 32)
    nan = TriMesh(np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="finite"):
        render.render_views(nan, cams, 32)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(render, "_CTXS", {})
    monkeypatch.setitem(sys.modules, "moderngl", None)  # import moderngl -> ImportError
    mesh = TriMesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.]]), np.array([[0, 1, 2]]))
    with pytest.raises(ImportError, match=r'pip install -e "\.\[render\]".*moderngl'):
        render.render_views(mesh, conditioning_cameras(1, np.random.default_rng(0)), 16)


# ------------------------------------------------------------------------------------------------------ rendering


def _procedural(cls=6, idx=1):
    import trimesh

    from jaxshape.data.procedural import generate_shape

    v, f = generate_shape(cls, idx)
    return trimesh.Trimesh(v, f, process=False)


def _plus_x_camera(r=2.0):
    fov = 2 * math.asin(RHO / r)
    c2w = np.array([[0, 0, 1, r], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)  # by hand
    return {"yaw": 0.0, "pitch": 0.0, "radius": r, "fov": fov, "c2w": c2w}


def _raster_mask(tris, cam, res):
    """Pixel-centre coverage of projected triangles (numpy edge functions)."""
    x, y, _ = _project(tris.reshape(-1, 3), cam)
    px = np.stack([(x + 1) / 2 * res, (1 - y) / 2 * res], -1).reshape(-1, 3, 2)
    gx, gy = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    mask = np.zeros((res, res), bool)
    for (ax, ay), (bx, by), (cx, cy) in px:
        d = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if abs(d) < 1e-12:
            continue
        w0 = ((bx - gx) * (cy - gy) - (by - gy) * (cx - gx)) / d
        w1 = ((cx - gx) * (ay - gy) - (cy - gy) * (ax - gx)) / d
        mask |= (w0 >= 0) & (w1 >= 0) & (1 - w0 - w1 >= 0)
    return mask


def test_procedural_mesh_renders_with_transparent_background(gl):
    cams = conditioning_cameras(4, np.random.default_rng(0))
    ims = gl.render_views(_procedural(), cams, 128)
    assert len(ims) == 4
    for im in ims:
        assert im.shape == (128, 128, 4) and im.dtype == np.uint8
        cover = (im[..., 3] > 0).mean()
        assert 0.02 < cover < 0.8
        for corner in (im[:6, :6], im[:6, -6:], im[-6:, :6], im[-6:, -6:]):
            assert (corner[..., 3] == 0).all()
        assert (im[..., :3][im[..., 3] == 0] == 0).all()
        obj = im[..., :3][im[..., 3] == 255].astype(int)
        assert np.abs(obj[:, 0] - obj[:, 2]).max() <= 1  # neutral grey material


def test_silhouette_matches_independent_projection(gl):
    mesh = _procedural(7, 0)  # mug: handle and a hole
    v = np.asarray(mesh.vertices)
    lo, hi = v.min(0), v.max(0)
    tris = ((v - (lo + hi) / 2) / (hi - lo).max())[np.asarray(mesh.faces)]
    cam = _plus_x_camera()
    ref = _raster_mask(tris, cam, 160)
    assert ref.mean() > 0.05
    for samples, need in ((4, 0.9), (0, 0.99)):
        im = gl.render_views(mesh, [cam], 160, samples=samples)[0]
        a = im[..., 3] > 127
        iou = (a & ref).sum() / (a | ref).sum()
        assert iou >= need, (samples, iou)


def _textured_quad(top=(220, 30, 30), bottom=(30, 40, 220)):
    """A unit quad in the x = 0 plane facing +x; its texture's top half ``top``, bottom half ``bottom``."""
    import trimesh
    from PIL import Image

    img = np.zeros((32, 32, 3), np.uint8)
    img[:16], img[16:] = top, bottom  # row 0 is the top of the image
    v = np.array([[0, -.5, -.5], [0, .5, -.5], [0, .5, .5], [0, -.5, .5]])
    uv = v[:, 1:] + 0.5  # u along +y (image right from +x), v along +z (image up); trimesh: v = 1 at the top row
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(img), baseColorFactor=[255] * 4,
                                              metallicFactor=0.0)
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], visual=trimesh.visual.TextureVisuals(uv=uv, material=mat),
                           process=False)


def test_texture_colour_and_orientation(gl):
    im = gl.render_views(_textured_quad(), [_plus_x_camera()], 96)[0]
    rgb = im[..., :3].astype(int)
    inside = im[..., 3] == 255
    rows = np.nonzero(inside.any(1))[0]
    mid = (rows[0] + rows[-1]) // 2
    upper, lower = inside.copy(), inside.copy()
    upper[mid - 2:] = False
    lower[:mid + 3] = False
    ru, rl = rgb[upper].mean(0), rgb[lower].mean(0)
    assert ru[0] > 2 * ru[2] and rl[2] > 2 * rl[0], (ru, rl)  # red on top, blue below: not flipped
    # chromaticity of the object = the texture's mean chromaticity (white light)
    tex_mean = np.array([(220 + 30) / 2, (30 + 40) / 2, (30 + 220) / 2])
    obj = rgb[inside].mean(0)
    np.testing.assert_allclose(obj / obj.sum(), tex_mean / tex_mean.sum(), atol=0.06)


def test_straight_alpha_at_the_edges(gl):
    """Partially covered edge pixels keep the object's colour (the multisample resolve is un-premultiplied)."""
    q = _textured_quad(top=(200, 120, 40), bottom=(200, 120, 40))
    a = math.radians(20)
    q.vertices = q.vertices @ np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    im = gl.render_views(q, [_plus_x_camera()], 96)[0]
    rgb, alpha = im[..., :3].astype(int), im[..., 3]
    edge = (alpha > 40) & (alpha < 215)
    inside = alpha == 255
    assert edge.sum() > 20
    np.testing.assert_allclose(rgb[edge].mean(0), rgb[inside].mean(0), atol=12)


def test_textured_glb_file(gl, tmp_path):
    """A textured mesh through a .glb file: the texture survives and 'auto' turns glTF's Y-up to z-up."""
    import trimesh

    q = _textured_quad(top=(240, 200, 20), bottom=(240, 200, 20))  # yellow
    y_up = q.copy()
    y_up.vertices = q.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # z-up -> glTF's y-up
    p = tmp_path / "quad.glb"
    p.write_bytes(y_up.export(file_type="glb"))
    cam = _plus_x_camera()
    a = gl.render_views(str(p), [cam], 64)[0]
    b = gl.render_views(trimesh.load(str(p), process=False), [cam], 64, up_axis="y")[0]
    c = gl.render_views(q, [cam], 64)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    obj = a[..., :3][a[..., 3] == 255].astype(float).mean(0)
    assert obj[0] > 1.5 * obj[2] and obj[1] > 1.5 * obj[2]  # yellow, not the default grey


def test_vertex_colours_and_trimesh_input(gl):
    import trimesh

    m = _procedural(0, 0)
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile([20, 200, 40, 255], (len(m.vertices), 1)))
    cam = conditioning_cameras(1, np.random.default_rng(1))
    obj = gl.render_views(m, cam, 64)[0]
    g = obj[..., :3][obj[..., 3] == 255].astype(float).mean(0)
    assert g[1] > 2 * g[0] and g[1] > 2 * g[2]
    tm = TriMesh(np.asarray(m.vertices), np.asarray(m.faces))
    grey = gl.render_views(tm, cam, 64)[0]
    np.testing.assert_array_equal(grey[..., 3], obj[..., 3])  # same geometry, same silhouette
    box = trimesh.creation.box((1, 0.7, 0.5))
    box.visual.face_colors = np.tile([30, 40, 210, 255], (len(box.faces), 1))
    b = gl.render_views(box, cam, 64)[0]
    b = b[..., :3][b[..., 3] == 255].astype(float).mean(0)
    assert b[2] > 2 * b[0] and b[2] > 2 * b[1]


def test_render_is_deterministic(gl):
    cams = conditioning_cameras(3, np.random.default_rng(5))
    mesh = _procedural(5, 0)
    a = gl.render_views(mesh, cams, 96)
    gl.render_views(_textured_quad(), cams[:1], 40)  # other state in between
    b = gl.render_views(mesh, cams, 96)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert decode_png(encode_png(a[0])).tobytes() == a[0].tobytes()


def test_prepare_renders_views_into_the_records(gl, tmp_path):
    """``prepare --views N``: N PNG views and their cameras per record, the cameras seeded by (seed, mesh id)."""
    from jaxshape.data.prepare import main as prepare_main
    from jaxshape.data.records import RecordSource

    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert prepare_main(["--embedded", "2", "-o", str(out), "--small", "--targets", "sparse_structure",
                             "--views", "3", "--view-size", "64", "--workers", "0", "--no-progress"]) == 0
        outs.append(RecordSource(str(out)))
    ex, again = outs[0][0], outs[1][0]
    assert len(ex["cond_views"]) == 3 and ex["cond_view_cameras"].shape == (3, 4)
    np.testing.assert_array_equal(ex["cond_view_cameras"], again["cond_view_cameras"])
    assert ex["cond_views"] == again["cond_views"]  # deterministic renders
    rgba = decode_png(ex["cond_views"][0])
    assert rgba.shape == (64, 64, 4) and 0.02 < float((rgba[..., 3] > 0).mean()) < 0.9
    assert not np.array_equal(ex["cond_view_cameras"], outs[0][1]["cond_view_cameras"])  # per mesh
    fov = ex["cond_view_cameras"][:, 3]
    assert np.all((fov >= np.deg2rad(10) - 1e-6) & (fov <= np.deg2rad(70) + 1e-6))


def test_embedded_set_with_views_and_resume_guard(gl, tmp_path):
    """``data.views`` on the embedded set renders its views on first use (a cache folder of its own); a resumed
    ``prepare`` of a folder with another view count is refused; image conditioning without views is a clear error."""
    import ml_collections

    from jaxshape.data.prepare import embedded_records, prepare
    from jaxshape.data.procedural import CLASSES, embedded_jobs
    from jaxshape.data.records import RecordSource
    from jaxshape.data.sources import make_data_iterator
    from jaxshape.data.targets import TargetConfig
    from jaxshape.trainer.defaults import stage_config

    out = embedded_records(3, targets=("sparse_structure",), resolution=8, points=256, root=str(tmp_path),
                           views=2, view_size=32, workers=1)
    assert out.endswith("-v2x32")
    ex = RecordSource(out)[0]
    assert len(ex["cond_views"]) == 2 and decode_png(ex["cond_views"][1]).shape == (32, 32, 4)
    same = TargetConfig(targets=("sparse_structure",), resolution=8, vecset=TargetConfig.small(8, 256).vecset)
    with pytest.raises(SystemExit, match="another config"):
        prepare([], out, same, workers=0, progress=False, jobs=embedded_jobs(3, root=str(tmp_path)),
                classes=list(CLASSES), num_views=3, view_size=32)
    data = ml_collections.ConfigDict(stage_config("ss_flow").data.to_dict())
    with pytest.raises(ValueError, match="needs data.views > 0"):
        make_data_iterator(data, ("latent", "cond_image"), "sparse_structure", process_index=0, process_count=1)
