"""Host-side (NumPy + Pillow, no JAX) image preprocessing for the image encoders of TRELLIS and PartPacker.

* :func:`trellis_preprocess` reproduces ``TrellisImageTo3DPipeline.preprocess_image``
  (``trellis/pipelines/trellis_image_to_3d.py``): bbox of ``alpha > 0.8*255`` (alpha >= 205), square of side
  ``int(1.2 * max extent)`` (extent without +1) around the bbox centre, Pillow crop (box coordinates rounded
  half-to-even, outside = transparent black), Pillow LANCZOS resize of the RGBA crop (premultiplied internally),
  then ``RGB * A`` in float32 and a truncating ``uint8`` cast: the object on **black**.  Bit-exact for the same
  Pillow major version, since the same Pillow calls are made.
* :func:`trellis2_preprocess` reproduces ``Trellis2ImageTo3DPipeline.preprocess_image`` and its DINOv3 resize.
* :func:`partpacker_preprocess` reproduces ``preprocess_image`` of PartPacker's ``flow/scripts/infer.py``
  (``resize="linear"``, INTER_LINEAR; ``resize="area"``: INTER_AREA, what PartPacker's ``app.py`` uses): mask
  ``alpha > 0``,
  :func:`recenter_foreground` (``flow/utils.py``) with its quirks, a resize of the ``S x S`` canvas to ``size``, then
  ``RGB * A + (1 - A)``: the object on **white**, filling 90 % of the frame.
* :func:`resize_like_cv2`: ``cv2.resize`` when ``import cv2`` works, else a NumPy re-implementation of OpenCV's
  INTER_LINEAR / INTER_AREA (same coefficient tables, 11-bit fixed point and SIMD rounding for ``uint8``, float32
  accumulation order).  Measured against opencv-python-headless 4.10.0.84 (PartPacker's pin) and 5.0.0.93 on
  x86-64: bit-exact for ``uint8`` linear/area and ``float32`` area, which is every resize the pipelines make;
  ``float32`` INTER_LINEAR (unused by them) within ~2e-7.  The documented contract is 2 uint8 levels.
* :func:`imagenet_normalize`: torchvision ``Normalize(mean, std)`` as both encoders apply it, channels-last.

Inputs: a PIL image or a ``uint8`` array ``[H, W, 4]`` (RGBA, straight alpha) or ``[H, W, 3]`` (RGB), optionally
with ``mask [H, W]`` (bool, or integers 0..255), which becomes the **straight** alpha channel (it replaces the alpha of
an RGBA input).  PIL images in other modes are converted to RGBA when they carry transparency, else to RGB.

Differences from upstream:

* A ``mask`` is a user-supplied matte, not rembg's cutout: rembg premultiplies its RGB by the mask, so upstream's
  later ``RGB * A`` weights soft edges by alpha squared; with a mask they are weighted by alpha once.
* Background removal follows upstream's branch (TRELLIS: an RGB or fully opaque RGBA image; PartPacker: a
  3-channel image) but needs ``rembg`` (an optional package, never required): without it a ``ValueError`` says how
  to supply the alpha instead.  An explicit ``mask`` is always used as given, even if fully opaque.
* Where upstream crashes (no foreground, a one-pixel object) or, for PartPacker, passes an empty mask through
  unchanged, a ``ValueError`` is raised.  TRELLIS upstream also drops the alpha of ``LA`` / ``P`` PIL images.
"""
from __future__ import annotations

import numbers

import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "trellis_preprocess", "trellis2_preprocess", "trellis_train_preprocess",
           "partpacker_preprocess", "recenter_foreground", "resize_like_cv2", "imagenet_normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REMBG_SESSIONS: dict = {}  # model name -> rembg session (created on first use)
_FIX = 2048  # OpenCV INTER_RESIZE_COEF_SCALE: 11-bit fixed-point interpolation weights for uint8


# ----------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------
def _check_size(fn, size, patch_size):
    for name, v in (("size", size), ("patch_size", patch_size)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")
    if size % patch_size:
        raise ValueError(f"{fn}: size {size} is not divisible by patch_size {patch_size}: the encoder needs a whole "
                         f"number of patches (DINOv2: 518 = 37*14; DINOv3: 512 = 32*16)")
    return int(size)


def _image_array(fn, image):
    """PIL image or array -> contiguous uint8 ``[H, W, 3|4]``."""
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA"):
            bands = image.getbands()
            alpha = "A" in bands or "a" in bands or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        image = np.asarray(image)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{fn}: image must be [H, W, 3] (RGB) or [H, W, 4] (RGBA), i.e. 3 or 4 channels, got shape "
                         f"{arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{fn}: image must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{fn}: image is empty, shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _with_mask(fn, arr, mask):
    """RGB(A) ``[H, W, C]`` + ``mask [H, W]`` -> RGBA with the mask as straight alpha."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{fn}: mask must be 2-D [H, W], got shape {m.shape}")
    if m.shape != arr.shape[:2]:
        raise ValueError(f"{fn}: mask shape {m.shape} does not match the image's [H, W] = {arr.shape[:2]}")
    if m.dtype == bool:
        a = np.where(m, np.uint8(255), np.uint8(0))
    elif m.dtype.kind in "iu" and (m.size == 0 or (m.min() >= 0 and m.max() <= 255)):
        a = m.astype(np.uint8)
    else:
        raise ValueError(f"{fn}: mask must be bool or integer 0..255 (straight alpha), got dtype {m.dtype}"
                         + (f" with range [{m.min()}, {m.max()}]" if m.dtype.kind in "iu" else ""))
    return np.concatenate([arr[..., :3], a[..., None]], axis=-1)


def _rembg_remove(fn, image, why):
    try:
        import rembg
    except ImportError:
        raise ValueError(f"{fn}: image is {why}, so upstream removes the background with rembg, which is not "
                         "installed. Pass an RGBA image whose alpha marks the object, or an RGB image with "
                         "mask=[H, W] (bool or uint8 0..255), or `pip install rembg`.") from None
    if "u2net" not in _REMBG_SESSIONS:
        _REMBG_SESSIONS["u2net"] = rembg.new_session("u2net")
    return rembg.remove(image, session=_REMBG_SESSIONS["u2net"])


# ----------------------------------------------------------------------------------------------------------------
# TRELLIS
# ----------------------------------------------------------------------------------------------------------------
def _alpha_box(fn, rgba, margin: float):
    """TRELLIS / TRELLIS.2's crop square: the bbox of ``alpha > 0.8*255`` (extents without +1), its centre and half
    its side ``int(max extent * margin) // 2``, as Pillow crop coordinates (rounded half-to-even by Pillow)."""
    ys, xs = np.nonzero(rgba[..., 3] > 0.8 * 255)
    if ys.size == 0:
        raise ValueError(f"{fn}: no pixel has alpha > 0.8*255 (alpha >= 205): the alpha/mask marks no foreground "
                         f"(max alpha {int(rgba[..., 3].max())})")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(max(x1 - x0, y1 - y0) * margin) // 2
    if half == 0:
        raise ValueError(f"{fn}: the foreground (alpha >= 205) bbox x [{x0}, {x1}], y [{y0}, {y1}] is too small: "
                         "its larger extent must be >= 2 px for a non-empty crop")
    return cx - half, cy - half, cx + half, cy + half


def trellis_preprocess(image, mask=None, *, size: int = 518, patch_size: int = 14) -> np.ndarray:
    """TRELLIS ``preprocess_image``: ``image`` (PIL, or uint8 ``[H, W, 4]`` RGBA / ``[H, W, 3]`` RGB) + optional
    ``mask [H, W]`` -> uint8 ``[size, size, 3]``, the object premultiplied by alpha (on black), its longer bbox side
    ``~size / 1.2``, centred.

    RGBA with some alpha < 255, or any image with ``mask``: used as is (no 1024 downscale).  RGB, or RGBA with every
    alpha == 255: upstream's background removal (``convert('RGB')``, LANCZOS downscale to ``max(w, h) <= 1024`` as
    ``(int(w*s), int(h*s))``, ``rembg.remove`` with a ``u2net`` session), which needs ``rembg``.
    """
    fn = "trellis_preprocess"
    size = _check_size(fn, size, patch_size)
    arr = _image_array(fn, image)
    if mask is not None:
        rgba = _with_mask(fn, arr, mask)
    elif arr.shape[2] == 4 and not np.all(arr[..., 3] == 255):
        rgba = arr
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
        scale = min(1, 1024 / max(img.size))
        if scale < 1:
            img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS)
        why = "RGB" if arr.shape[2] == 3 else "RGBA with every alpha == 255"
        rgba = np.asarray(_rembg_remove(fn, img, why).convert("RGBA"))
    crop = Image.fromarray(rgba).crop(_alpha_box(fn, rgba, 1.2))
    out = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    return ((out[..., :3] * out[..., 3:4]) * 255).astype(np.uint8)


def trellis2_preprocess(image, mask=None, *, size: int = 512, patch_size: int = 16) -> np.ndarray:
    """TRELLIS.2 ``Trellis2ImageTo3DPipeline.preprocess_image`` and the resize of its ``DinoV3FeatureExtractor``:
    ``image`` (PIL, or uint8 RGBA / RGB) + optional ``mask`` -> float32 ``[size, size, 3]`` in [0, 1], the object on
    black filling the frame.

    Upstream's order: a LANCZOS downscale to ``max(w, h) <= 1024`` (``(int(w*s), int(h*s))``, every input); the
    bbox of ``alpha > 0.8*255``; a square of side ``max extent`` (no margin, unlike TRELLIS's 1.2) around its
    centre (Pillow crop, coordinates rounded half-to-even, outside transparent black); ``RGB * A`` and a truncating
    ``uint8`` cast *at crop size*; then the LANCZOS resize of that RGB image to ``size`` and ``/ 255``. TRELLIS.2
    removes backgrounds with BiRefNet, which jaxshape does not ship: an image without transparency needs ``mask``.
    """
    fn = "trellis2_preprocess"
    size = _check_size(fn, size, patch_size)
    arr = _image_array(fn, image)
    if mask is not None:
        arr = _with_mask(fn, arr, mask)
    elif arr.shape[2] == 3 or np.all(arr[..., 3] == 255):
        raise ValueError(f"{fn}: the image has no transparency, and TRELLIS.2 would remove its background with "
                         "BiRefNet, which jaxshape does not ship; pass an RGBA image whose alpha marks the object, or "
                         "mask=[H, W] (bool or uint8 0..255)")
    img = Image.fromarray(arr)
    scale = min(1, 1024 / max(img.size))
    if scale < 1:
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS)
    crop = np.asarray(img.crop(_alpha_box(fn, np.asarray(img), 1.0))).astype(np.float32) / 255
    rgb = Image.fromarray(((crop[..., :3] * crop[..., 3:4]) * 255).astype(np.uint8))
    return np.asarray(rgb.resize((size, size), Image.Resampling.LANCZOS)).astype(np.float32) / 255


def trellis_train_preprocess(image, *, size: int = 518, ratio: float = 1.2, patch_size: int = 14) -> np.ndarray:
    """The crop of TRELLIS's and TRELLIS.2's training datasets (``ImageConditionedMixin.get_instance`` of
    ``trellis/datasets/components.py``; ``ratio`` 1.2 there, 1.0 in ``trellis2/datasets/components.py``), which
    differs from their pipelines' :func:`trellis_preprocess` / :func:`trellis2_preprocess`: an RGBA render ->
    float32 ``[size, size, 3]`` in [0, 1] on black.

    Upstream's order: the bbox of ``alpha > 0`` (inclusive max row / column); centre ``(min + max) / 2``; half side
    ``ratio · max(w, h) / 2``; the box ``int(centre ± half)`` (Python ``int``: toward zero) cropped by Pillow
    (outside: transparent black); the RGBA crop resized to ``size`` with LANCZOS (Pillow premultiplies RGBA inside
    ``resize``); then ``RGB / 255 · alpha / 255`` in float32 (no uint8 rounding)."""
    fn = "trellis_train_preprocess"
    size = _check_size(fn, size, patch_size)
    if not ratio > 0:
        raise ValueError(f"{fn}: ratio must be > 0, got {ratio}")
    arr = _image_array(fn, image)
    if arr.shape[2] != 4:
        raise ValueError(f"{fn}: a training view must be RGBA (its alpha marks the object), got shape {arr.shape}")
    ys, xs = np.nonzero(arr[..., 3])
    if len(xs) == 0:
        raise ValueError(f"{fn}: the view's alpha is 0 everywhere (no object to crop)")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) / 2 * ratio
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    img = np.asarray(Image.fromarray(arr, "RGBA").crop(box).resize((size, size), Image.Resampling.LANCZOS))
    rgb = img[..., :3].astype(np.float32) / np.float32(255.0)
    alpha = img[..., 3:4].astype(np.float32) / np.float32(255.0)
    return rgb * alpha


# ----------------------------------------------------------------------------------------------------------------
# PartPacker
# ----------------------------------------------------------------------------------------------------------------
def recenter_foreground(rgba, mask, border_ratio: float = 0.1, *, backend: str = "auto") -> np.ndarray:
    """PartPacker ``flow/utils.py::recenter_foreground`` for uint8 RGBA ``[H, W, 4]`` and ``mask [H, W]`` (bool)
    -> uint8 ``[S, S, 4]``, ``S = max(H, W)``, transparent black outside the object.

    Upstream's quirks are kept: rows ``r0..r1`` / columns ``c0..c1`` of the mask give ``h = r1 - r0``,
    ``w = c1 - c0`` (no +1) and the crop ``rgba[r0:r1, c0:c1]`` (the last mask row and column are dropped); it is
    resized (INTER_AREA, float32 in [0, 1], straight alpha) to ``(int(h*k), int(w*k))`` with
    ``k = int(S * (1 - border_ratio)) / max(h, w)``, pasted at ``((S - h2)//2, (S - w2)//2)`` and converted back
    with ``(x * 255).astype(uint8)`` (truncation).
    """
    fn = "recenter_foreground"
    if isinstance(border_ratio, bool) or not isinstance(border_ratio, numbers.Real) or not 0 <= border_ratio < 1:
        raise ValueError(f"{fn}: border_ratio must be a number in [0, 1), got {border_ratio!r}")
    img = np.asarray(rgba)
    m = np.asarray(mask, bool)
    if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        raise ValueError(f"{fn}: rgba must be uint8 [H, W, 4], got shape {img.shape} dtype {img.dtype}")
    if m.shape != img.shape[:2]:
        raise ValueError(f"{fn}: mask must be 2-D [H, W] = {img.shape[:2]}, got shape {m.shape}")
    rows, cols = np.nonzero(m)
    if rows.size == 0:
        raise ValueError(f"{fn}: the mask is empty: no pixel has alpha > 0, so there is no foreground to recenter")
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    h, w = r1 - r0, c1 - c0
    S = max(img.shape[:2])
    desired = int(S * (1 - border_ratio))
    h2, w2 = int(h * (desired / max(h, w, 1))), int(w * (desired / max(h, w, 1)))
    if min(h, w, h2, w2) < 1:
        raise ValueError(f"{fn}: the foreground bbox rows [{r0}, {r1}], cols [{c0}, {c1}] is degenerate: it must span "
                         f">= 2 rows and >= 2 columns (the crop drops the last of each) and keep >= 1 px of each "
                         f"after scaling to {desired} px (got {h2} x {w2})")
    top, left = (S - h2) // 2, (S - w2) // 2
    canvas = np.zeros((S, S, 4), np.float32)
    crop = img.astype(np.float32)[r0:r1, c0:c1] / 255
    canvas[top:top + h2, left:left + w2] = resize_like_cv2(crop, h2, w2, "area", backend=backend)
    return (canvas * 255).astype(np.uint8)


def partpacker_preprocess(image, mask=None, *, size: int = 518, border_ratio: float = 0.1, resize: str = "linear",
                          patch_size: int = 14, backend: str = "auto") -> np.ndarray:
    """PartPacker ``infer.py`` preprocessing: ``image`` (PIL, or uint8 ``[H, W, 4]`` / ``[H, W, 3]``) + optional
    ``mask [H, W]`` -> float32 ``[size, size, 3]`` in [0, 1]: the object composited on white, 90 % of the frame.

    RGBA (even fully opaque) or any image with ``mask``: used as is.  RGB: upstream's ``rembg.remove`` with a
    ``u2net`` session (no downscale), which needs ``rembg``.  Then mask = ``alpha > 0``, :func:`recenter_foreground`,
    :func:`resize_like_cv2` of the uint8 canvas to ``size`` (``resize="linear"``: INTER_LINEAR as ``infer.py``;
    ``"area"``: INTER_AREA), ``x / 255`` and ``RGB * A + (1 - A)`` in float32.  ``backend``: ``"auto"`` (cv2 if
    importable), ``"cv2"`` or ``"numpy"``.
    """
    fn = "partpacker_preprocess"
    size = _check_size(fn, size, patch_size)
    if resize not in ("linear", "area"):
        raise ValueError(f"{fn}: resize must be 'linear' (infer.py) or 'area' (app.py), got {resize!r}")
    arr = _image_array(fn, image)
    if mask is not None:
        rgba = _with_mask(fn, arr, mask)
    elif arr.shape[2] == 4:
        rgba = arr
    else:
        rgba = np.asarray(_rembg_remove(fn, arr, "RGB (no alpha channel)"))
    canvas = recenter_foreground(rgba, rgba[..., 3] > 0, border_ratio, backend=backend)
    out = resize_like_cv2(canvas, size, size, resize, backend=backend).astype(np.float32) / 255.0
    return out[..., :3] * out[..., 3:4] + (1 - out[..., 3:4])


# ----------------------------------------------------------------------------------------------------------------
# ImageNet normalization
# ----------------------------------------------------------------------------------------------------------------
def imagenet_normalize(rgb) -> np.ndarray:
    """``(x - mean) / std`` with ImageNet ``mean`` (0.485, 0.456, 0.406), ``std`` (0.229, 0.224, 0.225), channels-last
    ``[..., H, W, 3]`` -> float32, as torchvision ``Normalize`` in float32.  ``uint8`` input is divided by 255 first;
    floating input is taken to be in [0, 1] already (e.g. :func:`partpacker_preprocess` output).  Black maps to
    (-2.1179, -2.0357, -1.8044), white to (2.2489, 2.4286, 2.6400)."""
    x = np.asarray(rgb)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"imagenet_normalize: rgb must be channels-last [..., 3], got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255
    elif x.dtype.kind == "f":
        x = x.astype(np.float32)
    else:
        raise ValueError(f"imagenet_normalize: rgb must be uint8 (0..255) or floating (0..1), got dtype {x.dtype}")
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


# ----------------------------------------------------------------------------------------------------------------
# cv2.resize, or its NumPy re-implementation
# ----------------------------------------------------------------------------------------------------------------
def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize_like_cv2(src, height: int, width: int, interpolation: str = "linear", *, backend: str = "auto"):
    """``cv2.resize(src, (width, height), interpolation=INTER_LINEAR | INTER_AREA)`` for ``src [H, W]`` or
    ``[H, W, C]`` (C <= 4), uint8 or float32 -> the same dtype, ``[height, width(, C)]``.

    ``backend="auto"`` uses cv2 when importable, else the NumPy version; ``"cv2"`` / ``"numpy"`` force one.  The
    NumPy version follows OpenCV's ``resize.cpp``: a same-size resize is a copy; INTER_AREA with both factors >= 1 is
    the integer-factor box mean (``(sum + 2) >> 2`` for uint8 2x2, else ``round(sum * (1/area))``) or the generic
    pixel-area table (float32 sums, ``round`` for uint8); any other case is 2-tap linear with OpenCV's source
    coordinate (``(i + 0.5)*in/out - 0.5``, or INTER_AREA's upscale rule), columns clamped at the border, rows clipped;
    uint8 uses 11-bit weights and the SIMD vertical rounding ``((b0*(r0>>4))>>16 + (b1*(r1>>4))>>16 + 2) >> 2``.
    Bit-exact against cv2 except float32 INTER_LINEAR (within ~2e-7; see the module docstring).
    """
    if interpolation not in ("linear", "area"):
        raise ValueError(f"resize_like_cv2: interpolation must be 'linear' or 'area', got {interpolation!r}")
    if backend not in ("auto", "cv2", "numpy"):
        raise ValueError(f"resize_like_cv2: backend must be 'auto', 'cv2' or 'numpy', got {backend!r}")
    a = np.asarray(src)
    if a.ndim not in (2, 3) or (a.ndim == 3 and not 1 <= a.shape[2] <= 4) or a.dtype not in (np.uint8, np.float32):
        raise ValueError(f"resize_like_cv2: src must be uint8 or float32 [H, W] or [H, W, C<=4], got shape {a.shape} "
                         f"dtype {a.dtype}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"resize_like_cv2: {name} must be a positive int, got {v!r}")
    cv2 = _cv2() if backend != "numpy" else None
    if backend == "cv2" and cv2 is None:
        raise ValueError("resize_like_cv2: backend='cv2' but `import cv2` fails (pip install opencv-python-headless)")
    if cv2 is not None:
        flag = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_AREA
        out = cv2.resize(np.ascontiguousarray(a), (int(width), int(height)), interpolation=flag)
        return out.reshape((int(height), int(width)) + a.shape[2:])
    x = a if a.ndim == 3 else a[..., None]
    return _np_resize(x, int(height), int(width), interpolation).reshape((int(height), int(width)) + a.shape[2:])


def _np_resize(x, oh, ow, mode):
    h, w = x.shape[:2]
    if (h, w) == (oh, ow):
        return x.copy()
    sx, sy = 1.0 / (ow / w), 1.0 / (oh / h)  # OpenCV: scale = 1 / inv_scale, inv_scale = dst / src
    ix, iy = round(sx), round(sy)
    fast = abs(sx - ix) < np.finfo(np.float64).eps and abs(sy - iy) < np.finfo(np.float64).eps
    if mode == "area" and sx >= 1 and sy >= 1:
        return _area_fast(x, oh, ow, iy, ix) if fast else _area(x, oh, ow, sy, sx)
    return _linear(x, oh, ow, area_mode=mode == "area")


def _linear_taps(n_in, n_out, area_mode, f32_coord, clamp):
    """Per output index: source taps ``i0, i1`` and weights ``1 - f, f`` (float32), OpenCV's formulas."""
    inv = n_out / n_in
    scale = 1.0 / inv
    d = np.arange(n_out, dtype=np.float64)
    if area_mode:  # INTER_AREA upscale: blend only across a source-pixel boundary
        s = np.floor(d * scale)
        f = ((d + 1) - (s + 1) * inv).astype(np.float32)
        f = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float32)
    elif f32_coord:  # uint8 path: the coordinate is rounded to float32 before the floor
        f = ((d + 0.5) * scale - 0.5).astype(np.float32)
        s = np.floor(f)
        f = f - s
    else:
        fd = (d + 0.5) * scale - 0.5
        s = np.floor(fd)
        f = (fd - s).astype(np.float32)
    s = s.astype(np.int64)
    if clamp:  # columns: clamp the coordinate itself at both borders
        f[s < 0], s[s < 0] = 0, 0
        f[s >= n_in - 1], s[s >= n_in - 1] = 0, n_in - 1
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), (np.float32(1) - f).astype(np.float32), f


def _linear(x, oh, ow, area_mode):
    h, w = x.shape[:2]
    u8 = x.dtype == np.uint8
    y0, y1, b0, b1 = _linear_taps(h, oh, area_mode, u8, clamp=False)
    x0, x1, a0, a1 = _linear_taps(w, ow, area_mode, u8, clamp=True)
    if u8:
        a0, a1, b0, b1 = (np.rint(v * np.float32(_FIX)).astype(np.int64) for v in (a0, a1, b0, b1))
        s = x.astype(np.int64)
        rows = s[:, x0] * a0[None, :, None] + s[:, x1] * a1[None, :, None]
        b0, b1 = b0[:, None, None], b1[:, None, None]
        v = ((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16)
        return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    rows = x[:, x0] * a0[None, :, None] + x[:, x1] * a1[None, :, None]
    return rows[y0] * b0[:, None, None] + rows[y1] * b1[:, None, None]


def _area_taps(n_in, n_out, scale):
    """OpenCV ``computeResizeAreaTab``: per output index, padded ``[n_out, T]`` source indices and float32 weights."""
    taps = []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s2 = min(int(np.floor(f2)), n_in - 1)
        s1 = min(int(np.ceil(f1)), s2)
        t = [(s1 - 1, (s1 - f1) / cell)] if s1 - f1 > 1e-3 else []
        t += [(i, 1.0 / cell) for i in range(s1, s2)]
        if f2 - s2 > 1e-3:
            t.append((s2, min(f2 - s2, 1.0, cell) / cell))
        taps.append(t)
    idx = np.zeros((n_out, max(map(len, taps))), np.int64)
    wt = np.zeros(idx.shape, np.float32)  # padding: weight 0 adds an exact 0
    for d, t in enumerate(taps):
        for k, (i, a) in enumerate(t):
            idx[d, k], wt[d, k] = i, a
    return idx, wt


def _area(x, oh, ow, sy, sx):
    xi, xw = _area_taps(x.shape[1], ow, sx)
    yi, yw = _area_taps(x.shape[0], oh, sy)
    s = x.astype(np.float32)
    buf = s[:, xi[:, 0]] * xw[None, :, 0, None]
    for k in range(1, xi.shape[1]):  # same float32 accumulation order as OpenCV
        buf = buf + s[:, xi[:, k]] * xw[None, :, k, None]
    acc = buf[yi[:, 0]] * yw[:, 0, None, None]
    for k in range(1, yi.shape[1]):
        acc = acc + buf[yi[:, k]] * yw[:, k, None, None]
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8) if x.dtype == np.uint8 else acc


def _area_fast(x, oh, ow, ky, kx):
    cells = [x[i:oh * ky:ky, j:ow * kx:kx] for i in range(ky) for j in range(kx)]  # row-major within each cell
    if x.dtype == np.uint8:
        tot = sum(c.astype(np.int64) for c in cells)
        if kx == 2 and ky == 2:
            return ((tot + 2) >> 2).astype(np.uint8)
        return np.clip(np.rint(tot.astype(np.float32) * np.float32(1 / (kx * ky))), 0, 255).astype(np.uint8)
    acc, k = np.zeros_like(cells[0]), 0
    while k + 4 <= len(cells):  # OpenCV's scalar loop: 4-way unrolled sum
        acc = acc + (((cells[k] + cells[k + 1]) + cells[k + 2]) + cells[k + 3])
        k += 4
    for c in cells[k:]:
        acc = acc + c
    acc = acc * np.float32(1 / (kx * ky))
    cn = x.shape[2]
    if kx == 2 and ky == 2 and cn in (1, 4):  # OpenCV's SIMD 2x2 kernel (4 floats a step, pairwise sums)
        n = ow if cn == 4 else ow // 4 * 4
        acc[:, :n] = ((cells[0][:, :n] + cells[1][:, :n]) + (cells[2][:, :n] + cells[3][:, :n])) * np.float32(0.25)
    return acc
