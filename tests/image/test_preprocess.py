"""Tests for jaxshape.image: TRELLIS crop/resize/premultiply against explicit Pillow calls (tolerance 0), PartPacker
recenter geometry and white composite, the NumPy cv2 fallback against hand-computed cases (and against cv2 when it is
importable), the rembg branches with a fake module, argument errors, and ImageNet normalization."""
import math
import sys
import types

import numpy as np
import pytest
from PIL import Image

from jaxshape.image import (
    imagenet_normalize,
    partpacker_preprocess,
    recenter_foreground,
    resize_like_cv2,
    trellis_preprocess,
)
from jaxshape.image import preprocess as pp

try:
    import cv2  # noqa: F401

    HAVE_CV2 = True
except ImportError:
    HAVE_CV2 = False
needs_cv2 = pytest.mark.skipif(not HAVE_CV2, reason="cv2 (opencv-python-headless) is not installed")
BACKENDS = ["numpy", pytest.param("cv2", marks=needs_cv2)]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def round_half_even(v):
    """Written out, not Python's round(): nearest integer, ties to the even one."""
    f = math.floor(v)
    r = v - f
    if r != 0.5:
        return f + 1 if r > 0.5 else f
    return f if f % 2 == 0 else f + 1


def scene(h, w, x0, x1, y0, y1, seed=0):
    """RGBA [h, w, 4]: random RGB everywhere (garbage under alpha 0), alpha 255 on the inclusive box
    [y0..y1] x [x0..x1], 0 elsewhere."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
    img[..., 3] = 0
    img[y0:y1 + 1, x0:x1 + 1, 3] = 255
    return img


def trellis_expected(rgba, x0, x1, y0, y1, size=518):
    """Independent TRELLIS rule from a known bbox: the integer crop box (half-to-even origin), Pillow crop + LANCZOS,
    float32 premultiply, truncation."""
    half = int(1.2 * max(x1 - x0, y1 - y0)) // 2
    ox, oy = round_half_even((x0 + x1) / 2 - half), round_half_even((y0 + y1) / 2 - half)
    box = (ox, oy, ox + 2 * half, oy + 2 * half)
    out = Image.fromarray(rgba).crop(box).resize((size, size), Image.Resampling.LANCZOS)
    f = np.asarray(out).astype(np.float32) / 255
    return ((f[..., :3] * f[..., 3:]) * 255).astype(np.uint8), box


@pytest.fixture
def fake_rembg(monkeypatch):
    """A stand-in ``rembg`` module recording its calls; ``remove`` returns the input with alpha 255 on a box."""
    mod = types.ModuleType("rembg")
    mod.sessions, mod.calls = [], []

    def new_session(model_name="u2net"):
        mod.sessions.append(model_name)
        return ("session", model_name)

    def remove(img, session=None):
        arr = np.asarray(img)
        mod.calls.append((type(img), arr.shape, session))
        a = np.zeros(arr.shape[:2], np.uint8)
        a[arr.shape[0] // 4:arr.shape[0] // 2, arr.shape[1] // 4:arr.shape[1] // 2] = 255
        out = np.concatenate([arr, a[..., None]], -1)
        return Image.fromarray(out) if isinstance(img, Image.Image) else out

    mod.new_session, mod.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", mod)
    monkeypatch.setattr(pp, "_REMBG_SESSIONS", {})
    return mod


# ----------------------------------------------------------------------------------------------------------------
# TRELLIS
# ----------------------------------------------------------------------------------------------------------------
def test_pillow_crop_rounds_half_to_even():
    img = Image.fromarray(np.arange(16 * 16 * 4, dtype=np.uint32).astype(np.uint8).reshape(16, 16, 4))
    for box, origin in [((0.5, 0.5, 10.5, 10.5), (0, 0)), ((1.5, 1.5, 11.5, 11.5), (2, 2)),
                        ((2.5, 3.5, 12.5, 13.5), (2, 4))]:
        assert round_half_even(box[0]) == origin[0] and round_half_even(box[1]) == origin[1]
        want = img.crop(origin + (origin[0] + 10, origin[1] + 10))
        assert np.array_equal(np.asarray(img.crop(box)), np.asarray(want))


@pytest.mark.parametrize("hw, bbox, box", [
    ((64, 64), (10, 50, 20, 44), (6, 8, 54, 56)),  # even extents (40, 24), integer centre (30, 32)
    ((64, 64), (12, 51, 21, 46), (8, 10, 54, 56)),  # odd extent 39: centre (31.5, 33.5), origin 8.5 / 10.5 -> 8 / 10
    ((64, 64), (11, 50, 20, 45), (8, 10, 54, 56)),  # centre (30.5, 32.5), origin 7.5 / 9.5 -> 8 / 10
    ((64, 64), (0, 40, 30, 63), (-4, 22, 44, 70)),  # touches left and bottom: zero padding
    ((40, 90), (20, 70, 5, 34), (15, -10, 75, 50)),  # non-square image, padded above and below
])
def test_trellis_matches_explicit_pillow(hw, bbox, box):
    x0, x1, y0, y1 = bbox
    rgba = scene(*hw, x0, x1, y0, y1)
    want, want_box = trellis_expected(rgba, x0, x1, y0, y1)
    assert want_box == box
    got = trellis_preprocess(rgba)
    assert got.dtype == np.uint8 and got.shape == (518, 518, 3)
    assert np.array_equal(got, want)
    assert np.array_equal(trellis_preprocess(Image.fromarray(rgba)), want)  # PIL input


def test_trellis_black_background_and_padding():
    rgba = scene(64, 64, 10, 50, 20, 44)  # box (6, 8, 54, 56): source columns 6..9 are alpha 0 (RGB is garbage)
    out = trellis_preprocess(rgba)
    assert rgba[:, :10, :3].any() and not out[:, :10].any()
    out = trellis_preprocess(scene(64, 64, 0, 40, 30, 63))  # box (-4, 22, 44, 70): padded left and bottom
    assert not out[:, :8].any() and not out[-8:].any()
    assert out[259, 259].any()


def test_trellis_alpha_threshold_204_vs_205():
    base = scene(64, 64, 20, 39, 20, 39)
    outs = {}
    for a, bbox in [(204, (20, 39, 20, 39)), (205, (20, 50, 20, 50))]:
        rgba = base.copy()
        rgba[50, 50, 3] = a  # a far pixel: inside the bbox only when alpha > 0.8 * 255
        outs[a] = trellis_preprocess(rgba)
        assert np.array_equal(outs[a], trellis_expected(rgba, *bbox)[0])
    assert not np.array_equal(outs[204], outs[205])


def test_trellis_premultiply_truncates():
    rgba = scene(40, 40, 8, 32, 8, 32)  # extent 24 -> side int(28.8) = 28, box (6, 6, 34, 34): resize 28 -> 28 no-op
    rgba[20, 20] = (200, 100, 7, 205)
    out = trellis_preprocess(rgba, size=28, patch_size=14)
    # 200*205/255 = 160.78, 100*205/255 = 80.39, 7*205/255 = 5.63: truncated, not rounded
    assert out[14, 14].tolist() == [160, 80, 5]
    want = rgba[8:33, 8:33, :3].copy()  # opaque pixels pass unchanged
    want[12, 12] = (160, 80, 5)
    assert np.array_equal(out[2:27, 2:27], want)
    assert not out[:2].any() and not out[:, :2].any()


def test_trellis_mask_input_is_straight_alpha():
    rgba = scene(64, 64, 12, 51, 21, 46)
    rgba[21:47, 12:52, 3] = np.random.default_rng(1).integers(205, 256, (26, 40))
    want = trellis_preprocess(rgba)
    assert np.array_equal(trellis_preprocess(rgba[..., :3], rgba[..., 3]), want)
    assert np.array_equal(trellis_preprocess(rgba, rgba[..., 3].astype(np.int64)), want)  # mask replaces alpha
    hard = scene(64, 64, 12, 51, 21, 46)
    assert np.array_equal(trellis_preprocess(hard[..., :3], hard[..., 3] > 0), trellis_preprocess(hard))
    la = Image.fromarray(np.ascontiguousarray(hard[..., [0, 3]]))  # other PIL modes with alpha become RGBA
    assert np.array_equal(trellis_preprocess(la), trellis_preprocess(np.asarray(la.convert("RGBA"))))


def test_trellis_rembg_branch(fake_rembg):
    rgb = np.random.default_rng(2).integers(0, 256, (1001, 2000, 3)).astype(np.uint8)
    out = trellis_preprocess(rgb)
    # > 1024: LANCZOS downscale by 1024/2000 to (int(2000*0.512), int(1001*0.512)) = (1024, 512), then rembg
    assert fake_rembg.sessions == ["u2net"]
    assert fake_rembg.calls == [(Image.Image, (512, 1024, 3), ("session", "u2net"))]
    small = Image.fromarray(rgb).resize((1024, 512), Image.Resampling.LANCZOS)
    assert np.array_equal(out, trellis_preprocess(fake_rembg.remove(small)))
    fake_rembg.calls.pop()
    opaque = np.concatenate([rgb[:300, :400], np.full((300, 400, 1), 255, np.uint8)], -1)
    trellis_preprocess(opaque)  # fully opaque RGBA: background removal too (no downscale: 400 <= 1024)
    assert fake_rembg.calls[-1][1] == (300, 400, 3) and fake_rembg.sessions == ["u2net"]  # session reused
    opaque[0, 0, 3] = 254  # any alpha < 255: the alpha is used as is
    assert np.array_equal(trellis_preprocess(opaque), trellis_expected(opaque, 0, 399, 0, 299)[0])
    assert len(fake_rembg.calls) == 2


def test_trellis_refuses_without_rembg(monkeypatch):
    monkeypatch.setitem(sys.modules, "rembg", None)  # import rembg -> ImportError
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image is RGB.*rembg.*mask=\[H, W\]"):
        trellis_preprocess(rgb)
    with pytest.raises(ValueError, match="every alpha == 255.*pip install rembg"):
        trellis_preprocess(np.full((32, 32, 4), 255, np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# PartPacker
# ----------------------------------------------------------------------------------------------------------------
def partpacker_scene():
    """80 x 100 RGBA: mask rows 17..62, cols 30..75 (h = w = 45, no +1); red except the last mask row / column,
    which are blue and fall outside upstream's crop [17:62, 30:75]."""
    img = np.zeros((80, 100, 4), np.uint8)
    img[17:63, 30:76] = (0, 0, 255, 255)
    img[17:62, 30:75] = (255, 0, 0, 255)
    return img


@pytest.mark.parametrize("backend", BACKENDS)
def test_recenter_geometry(backend):
    img = partpacker_scene()
    canvas = recenter_foreground(img, img[..., 3] > 0, backend=backend)
    # S = 100, desired int(100*0.9) = 90, scale 90/45 = 2: a 90 x 90 block at ((100-90)//2, (100-90)//2) = (5, 5)
    assert canvas.shape == (100, 100, 4) and canvas.dtype == np.uint8
    assert (canvas[5:95, 5:95] == (255, 0, 0, 255)).all()
    inside = np.zeros((100, 100), bool)
    inside[5:95, 5:95] = True
    assert not canvas[~inside].any()  # transparent black elsewhere; no blue anywhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_recenter_non_integer_scale(backend):
    img = np.zeros((77, 60, 4), np.uint8)
    img[10:41, 5:26] = (10, 200, 30, 255)  # mask rows 10..40, cols 5..25: h = 30, w = 20
    canvas = recenter_foreground(img, img[..., 3] > 0, backend=backend)
    S, desired = 77, int(77 * 0.9)
    h2, w2 = int(30 * (desired / 30)), int(20 * (desired / 30))
    assert (desired, h2) == (69, 69)
    top, left = (S - h2) // 2, (S - w2) // 2
    rows, cols = np.nonzero(canvas[..., 3])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (top, top + h2 - 1, left, left + w2 - 1)
    assert (canvas[top:top + h2, left:left + w2] == (10, 200, 30, 255)).all()  # uniform crop stays uniform


@pytest.mark.parametrize("backend", BACKENDS)
def test_recenter_truncates_the_resized_crop(backend):
    rng = np.random.default_rng(8)
    img = np.zeros((50, 64, 4), np.uint8)
    img[9:41, 7:30] = rng.integers(1, 256, (32, 23, 4))  # soft alpha, straight RGB; h = 31, w = 22
    canvas = recenter_foreground(img, img[..., 3] > 0, backend=backend)
    h2, w2 = int(31 * (57 / 31)), int(22 * (57 / 31))  # S = 64, desired int(64*0.9) = 57
    crop = resize_like_cv2(img[9:40, 7:29].astype(np.float32) / 255, h2, w2, "area", backend=backend)
    top, left = (64 - h2) // 2, (64 - w2) // 2
    assert np.array_equal(canvas[top:top + h2, left:left + w2], (crop * 255).astype(np.uint8))
    assert (np.rint(crop * 255) != (crop * 255).astype(np.uint8)).any()  # rounding would differ
    assert canvas[:top].sum() == 0 and canvas[top + h2:].sum() == 0 and canvas[:, :left].sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_partpacker_frame_and_white_background(backend):
    img = partpacker_scene()
    img[img[..., 3] == 0, :3] = 77  # garbage RGB under alpha 0 must not show
    out = partpacker_preprocess(img, backend=backend)
    assert out.dtype == np.float32 and out.shape == (518, 518, 3)
    white = (out == 1.0).all(-1)
    rows, cols = np.nonzero(~white)
    # canvas rows 5..94 of 100; INTER_LINEAR source row (i + 0.5) * 100/518 - 0.5 first touches row 5 at i = 23
    # (4.04) and last touches row 94 at i = 494 (94.96): 472 px = 91 % of the frame, centred
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (23, 494, 23, 494)
    assert white[:23].all() and white[495:].all() and white[:, :23].all() and white[:, 495:].all()
    assert (out[30:488, 30:488] == (1.0, 0.0, 0.0)).all()
    area = partpacker_preprocess(img, resize="area", backend=backend)
    assert (area[:20] == 1.0).all() and (area[259, 259] == (1.0, 0.0, 0.0)).all()
    assert not np.array_equal(area, out)


def test_partpacker_mask_and_rembg_branches(fake_rembg):
    img = partpacker_scene()
    want = partpacker_preprocess(img, backend="numpy")
    assert np.array_equal(partpacker_preprocess(img[..., :3], img[..., 3] > 0, backend="numpy"), want)
    assert np.array_equal(partpacker_preprocess(Image.fromarray(img), backend="numpy"), want)
    assert fake_rembg.calls == []
    rgb = np.random.default_rng(3).integers(0, 256, (1100, 300, 3)).astype(np.uint8)
    out = partpacker_preprocess(rgb, backend="numpy")
    assert fake_rembg.sessions == ["u2net"] and fake_rembg.calls == [(np.ndarray, (1100, 300, 3), ("session", "u2net"))]
    assert np.array_equal(out, partpacker_preprocess(fake_rembg.remove(rgb), backend="numpy"))


def test_partpacker_refuses_without_rembg(monkeypatch):
    monkeypatch.setitem(sys.modules, "rembg", None)
    with pytest.raises(ValueError, match=r"partpacker_preprocess: image is RGB.*mask="):
        partpacker_preprocess(np.zeros((32, 32, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# NumPy fallback of cv2.resize
# ----------------------------------------------------------------------------------------------------------------
def test_area_integer_downscale_is_box_mean():
    rng = np.random.default_rng(4)
    f = rng.random((6, 9, 4), dtype=np.float32)
    for k in (2, 3):
        src = f[:6 // k * k, :9 // k * k]
        want = src.reshape(6 // k, k, 9 // k, k, 4).astype(np.float64).mean((1, 3))
        got = resize_like_cv2(src, 6 // k, 9 // k, "area", backend="numpy")
        assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-6
    u = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    s2 = u.astype(np.int64).reshape(3, 2, 3, 2, 3).sum((1, 3))
    assert np.array_equal(resize_like_cv2(u, 3, 3, "area", backend="numpy"), (s2 + 2) // 4)  # ties round up
    s3 = u.astype(np.int64).reshape(2, 3, 2, 3, 3).sum((1, 3))
    want3 = np.vectorize(round_half_even)(s3 / 9)
    assert np.array_equal(resize_like_cv2(u, 2, 2, "area", backend="numpy"), want3)
    assert np.array_equal(resize_like_cv2(u, 6, 6, "area", backend="numpy"), u)  # same size: a copy


def test_area_fractional_downscale_and_upscale():
    src = np.float32([[0.0, 0.3, 0.9]])  # 3 -> 2: cells [0, 1.5) and [1.5, 3)
    got = resize_like_cv2(src, 1, 2, "area", backend="numpy")
    assert np.abs(got - [[(0.0 + 0.5 * 0.3) / 1.5, (0.5 * 0.3 + 0.9) / 1.5]]).max() < 1e-7
    # upscale 2 -> 5: nearest-like, blending only where an output pixel straddles the source boundary (x = 2.5)
    for dt in (np.float32, np.uint8):
        got = resize_like_cv2(np.array([[0, 100]], dt), 1, 5, "area", backend="numpy")
        assert got.tolist() == [[0, 0, 50, 100, 100]]


def test_linear_pixel_centre_formula():
    src = np.array([[0, 100, 200, 250]], np.uint8)  # 4 -> 8: x = (i + 0.5)/2 - 0.5, clamped to [0, 3]
    assert resize_like_cv2(src.astype(np.float32), 1, 8, "linear", backend="numpy").tolist() == \
        [[0, 25, 75, 125, 175, 212.5, 237.5, 250]]
    # uint8: 11-bit weights, halves round up (212.5 -> 213, 237.5 -> 238)
    assert resize_like_cv2(src, 1, 8, "linear", backend="numpy").tolist() == [[0, 25, 75, 125, 175, 213, 238, 250]]
    g = resize_like_cv2(np.float32([[0, 1], [2, 3]]), 4, 4, "linear", backend="numpy")
    w = np.float32([0, 0.25, 0.75, 1])
    assert np.array_equal(g, 2 * w[:, None] + w[None, :])
    u = np.random.default_rng(7).integers(0, 256, (8, 6, 3)).astype(np.uint8)
    box = (u.astype(np.int64).reshape(4, 2, 3, 2, 3).sum((1, 3)) + 2) // 4
    assert np.array_equal(resize_like_cv2(u, 4, 3, "linear", backend="numpy"), box)  # exact 2x: weights 1024 each


@needs_cv2
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("mode", ["linear", "area"])
def test_numpy_resize_matches_cv2(dtype, mode):
    rng = np.random.default_rng(5)
    for (h, w), (oh, ow), cn in [((300, 420), (518, 518), 4), ((1036, 700), (518, 518), 4), ((45, 31), (90, 70), 3),
                                 ((97, 131), (40, 50), 1), ((64, 64), (16, 16), 4), ((60, 90), (30, 45), 1)]:
        src = rng.integers(0, 256, (h, w, cn)).astype(np.uint8)
        src = src if dtype == np.uint8 else src.astype(np.float32) / 255
        ref = resize_like_cv2(src, oh, ow, mode, backend="cv2")
        got = resize_like_cv2(src, oh, ow, mode, backend="numpy")
        assert got.shape == ref.shape and got.dtype == ref.dtype
        if dtype == np.float32 and mode == "linear":  # not bit-exact: ~1 ulp (unused by the pipelines)
            assert np.abs(got - ref).max() <= 1e-6
        else:  # measured bit-exact (opencv-python-headless 4.10.0.84 and 5.0.0.93, x86-64)
            assert np.array_equal(got, ref), (h, w, oh, ow, cn)


@needs_cv2
@pytest.mark.parametrize("resize", ["linear", "area"])
def test_partpacker_numpy_matches_cv2(resize):
    rng = np.random.default_rng(6)
    for H, W in [(300, 420), (1024, 700), (100, 80), (518, 518)]:
        img = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
        yy, xx = np.mgrid[:H, :W]
        r = rng.uniform(0.1, 0.45) * min(H, W)
        img[..., 3] = (np.clip((r - np.hypot(yy - 0.45 * H, (xx - 0.55 * W) * 1.3)) / 3, 0, 1) * 255).astype(np.uint8)
        ref = partpacker_preprocess(img, resize=resize, backend="cv2")
        got = partpacker_preprocess(img, resize=resize, backend="numpy")
        assert np.abs(got - ref).max() * 255 <= 2 + 1e-3  # the documented contract
        assert np.array_equal(got, ref)  # measured: bit-exact


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [trellis_preprocess, partpacker_preprocess])
def test_argument_errors(fn):
    rgb = np.zeros((20, 20, 3), np.uint8)
    for c in (2, 5):
        with pytest.raises(ValueError, match=r"image must be \[H, W, 3\].*3 or 4 channels"):
            fn(np.zeros((20, 20, c), np.uint8))
    with pytest.raises(ValueError, match="3 or 4 channels"):
        fn(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="image must be uint8"):
        fn(np.zeros((20, 20, 4), np.float32))
    with pytest.raises(ValueError, match=r"mask shape \(20, 19\) does not match"):
        fn(rgb, np.ones((20, 19), bool))
    with pytest.raises(ValueError, match="mask must be 2-D"):
        fn(rgb, np.ones((20, 20, 1), bool))
    with pytest.raises(ValueError, match="mask must be bool or integer 0..255"):
        fn(rgb, np.ones((20, 20), np.float32))
    with pytest.raises(ValueError, match="mask must be bool or integer 0..255"):
        fn(rgb, np.full((20, 20), 256))
    with pytest.raises(ValueError, match="size 520 is not divisible by patch_size 14"):
        fn(rgb, np.ones((20, 20), bool), size=520)
    with pytest.raises(ValueError, match="size 518 is not divisible by patch_size 16"):
        fn(rgb, np.ones((20, 20), bool), patch_size=16)
    with pytest.raises(ValueError, match="size must be a positive int"):
        fn(rgb, np.ones((20, 20), bool), size=0)
    assert fn(rgb, np.ones((20, 20), bool), size=512, patch_size=16).shape == (512, 512, 3)  # DINOv3


def test_empty_and_degenerate_foreground():
    rgb = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"trellis_preprocess: no pixel has alpha > 0.8\*255 \(alpha >= 205\)"):
        trellis_preprocess(rgb, np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="alpha >= 205"):
        trellis_preprocess(np.concatenate([rgb, np.full((20, 20, 1), 204, np.uint8)], -1))
    with pytest.raises(ValueError, match="too small"):
        trellis_preprocess(rgb, np.eye(20, dtype=bool) & (np.arange(20) == 3))
    with pytest.raises(ValueError, match="mask is empty: no pixel has alpha > 0"):
        partpacker_preprocess(rgb, np.zeros((20, 20), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        partpacker_preprocess(np.zeros((20, 20, 4), np.uint8))
    row = np.zeros((20, 20), bool)
    row[5, 2:15] = True  # one row: upstream's crop [5:5, 2:14] would be empty
    with pytest.raises(ValueError, match="degenerate: it must span >= 2 rows"):
        partpacker_preprocess(rgb, row)
    with pytest.raises(ValueError, match="resize must be 'linear'"):
        partpacker_preprocess(rgb, row, resize="cubic")


# ----------------------------------------------------------------------------------------------------------------
# ImageNet normalization
# ----------------------------------------------------------------------------------------------------------------
def test_imagenet_normalize():
    black, white = np.zeros((2, 5, 7, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    nb, nw = imagenet_normalize(black), imagenet_normalize(white)
    assert nb.dtype == np.float32 and nb.shape == (2, 5, 7, 3)
    assert np.abs(nb - np.float32([-2.1179, -2.0357, -1.8044])).max() < 1e-4
    assert np.abs(nw - np.float32([2.2489, 2.4286, 2.6400])).max() < 1e-4
    assert np.array_equal(imagenet_normalize(np.ones((4, 4, 3), np.float64)), nw)  # float input: already in [0, 1]
    with pytest.raises(ValueError, match=r"channels-last \[\.\.\., 3\]"):
        imagenet_normalize(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8 .* or floating"):
        imagenet_normalize(np.zeros((4, 4, 3), np.int64))


# ----------------------------------------------------------------------------------------------------------------
# the training-dataset crop of TRELLIS / TRELLIS.2 (ImageConditionedMixin.get_instance)
# ----------------------------------------------------------------------------------------------------------------
def _upstream_training_crop(rgba, size, ratio):
    """The lines of ``ImageConditionedMixin.get_instance`` (trellis / trellis2 ``datasets/components.py``) with
    torch, as upstream runs them (ratio 1.2 / none)."""
    torch = pytest.importorskip("torch")
    image = Image.fromarray(rgba, "RGBA")
    alpha = np.array(image.getchannel(3))
    bbox = np.array(alpha).nonzero()
    bbox = [bbox[1].min(), bbox[0].min(), bbox[1].max(), bbox[0].max()]
    center = [(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2]
    hsize = max(bbox[2] - bbox[0], bbox[3] - bbox[1]) / 2
    aug_hsize = hsize * ratio if ratio != 1.0 else hsize
    aug_bbox = [int(center[0] - aug_hsize), int(center[1] - aug_hsize), int(center[0] + aug_hsize),
                int(center[1] + aug_hsize)]
    image = image.crop(aug_bbox).resize((size, size), Image.Resampling.LANCZOS)
    alpha = image.getchannel(3)
    image = image.convert("RGB")
    image = torch.tensor(np.array(image)).permute(2, 0, 1).float() / 255.0
    alpha = torch.tensor(np.array(alpha)).float() / 255.0
    return (image * alpha.unsqueeze(0)).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("ratio,size", [(1.2, 518), (1.0, 512), (1.2, 56)])
@pytest.mark.parametrize("hw,box", [((300, 260), (40, 200, 90, 250)), ((200, 200), (0, 199, 3, 60)),
                                    ((181, 233), (100, 101, 20, 170))])
def test_trellis_train_preprocess_matches_the_upstream_dataset_code(ratio, size, hw, box):
    from jaxshape.image import trellis_train_preprocess

    rgba = scene(*hw, *box, seed=size)
    rgba[box[2] + 1, box[0] + 1, 3] = 7  # faint alpha counts (alpha > 0), and scales its pixel's colour
    got = trellis_train_preprocess(rgba, size=size, ratio=ratio, patch_size=14 if size % 14 == 0 else 16)
    want = _upstream_training_crop(rgba, size, ratio)
    assert got.dtype == np.float32 and got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, want)


def test_trellis_train_preprocess_errors_and_view_rules():
    from jaxshape.data.pipeline import ViewConfig, preprocess_view
    from jaxshape.image import trellis2_preprocess, trellis_train_preprocess

    rgba = scene(120, 100, 20, 70, 30, 90)
    with pytest.raises(ValueError, match="trellis_train_preprocess: a training view must be RGBA"):
        trellis_train_preprocess(rgba[..., :3])
    with pytest.raises(ValueError, match="alpha is 0 everywhere"):
        trellis_train_preprocess(np.zeros((20, 20, 4), np.uint8))
    with pytest.raises(ValueError, match="ratio must be > 0"):
        trellis_train_preprocess(rgba, ratio=0)
    for rule, want in (("trellis2_train", trellis_train_preprocess(rgba, size=64, ratio=1.0, patch_size=16)),
                       ("trellis_train", trellis_train_preprocess(rgba, size=64, ratio=1.2, patch_size=16)),
                       ("trellis2", trellis2_preprocess(rgba, size=64, patch_size=16))):
        got = preprocess_view(rgba, ViewConfig(count=1, preprocess=rule, size=64, patch_size=16))
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="views preprocess must be one of"):
        ViewConfig(preprocess="trellis3")
