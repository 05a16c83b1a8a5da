"""Backend-specific formulations of the layers' hot spots, apart from the layers that use them.

* :mod:`jaxshape.kernels.flash_attention`: blocked softmax attention with a recomputing custom VJP (CPU; any
  backend on request).
* :mod:`jaxshape.kernels.conv3d`: the "same" 3-D convolution as im2col / shifted matmuls / Winograd F(2, 3) /
  ``lax.conv``, and the rule that picks one per backend, width, input size and dtype.

The layers in :mod:`jaxshape.nn` call these; a Pallas GPU/TPU kernel would join them here.
"""
