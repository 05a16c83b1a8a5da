"""Host-side image preprocessing for the image encoders (NumPy + Pillow; cv2 and rembg optional, never JAX).

* :func:`trellis_preprocess`: TRELLIS ``preprocess_image`` -> uint8 ``[518, 518, 3]``, object on black (1/1.2 frame).
* :func:`trellis2_preprocess`: TRELLIS.2 -> float32 ``[512, 512, 3]`` in [0, 1], object on black (full frame).
* :func:`partpacker_preprocess`: PartPacker ``infer.py`` -> float32 ``[518, 518, 3]`` in [0, 1], object on white (90 %).
* :func:`recenter_foreground`, :func:`resize_like_cv2`: the PartPacker building blocks (cv2, or a NumPy equivalent).
* :func:`imagenet_normalize`: ``(x - mean) / std`` channels-last, float32.
* :func:`encode_png` / :func:`decode_png`: how records store views.

Details and the differences from upstream: :mod:`jaxshape.image.preprocess`.
"""
from jaxshape.image.codec import decode_png, encode_png
from jaxshape.image.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_normalize,
    partpacker_preprocess,
    recenter_foreground,
    resize_like_cv2,
    trellis2_preprocess,
    trellis_preprocess,
    trellis_train_preprocess,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "decode_png", "encode_png", "imagenet_normalize", "partpacker_preprocess",
           "recenter_foreground", "resize_like_cv2", "trellis2_preprocess", "trellis_preprocess",
           "trellis_train_preprocess"]
