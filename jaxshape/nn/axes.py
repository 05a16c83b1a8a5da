"""Logical axis names of parameters and activations, defined once.

Every parameter carries one of these names per dimension (``jaxshape.nn.initializers.partitioned``); the trainer's
rules table (``jaxshape.trainer.sharding.LOGICAL_RULES``) maps each name to mesh axes or to replication. A
parameter whose name has no rule is an error when the train state is created, so a misspelt name cannot silently
replicate a model.
"""

BATCH = "batch"  # examples of a batch (activations only)
EMBED = "embed"  # the model width: the FSDP-sharded axis of most kernels
COND = "cond"  # width of the condition tokens (cross-attention key/value input)
HEADS = "heads"  # attention heads (projection outputs: heads × head_dim features)
HEAD_DIM = "head_dim"  # features of one head (per-head RMS norm gamma)
MLP = "mlp"  # feed-forward hidden width
MOD = "mod"  # adaLN modulation outputs (6 × width)
LAYERS = "layers"  # the leading axis of a scanned layer stack
NORM = "norm"  # norm scale / bias
PATCH = "patch"  # patchified latent features (input / output layer of the sparse-structure DiT)
FREQ = "freq"  # sinusoidal timestep features
EMBED_OUT = "embed_out"  # output of the timestep MLP's second layer
POINTS = "points"  # Fourier point features (input of the vecset point projections)
LATENT = "latent"  # VAE latent channels
CONV_K = "conv_k"  # a spatial axis of a 3-D conv kernel
CONV_IN = "conv_in"  # conv input channels
CONV_OUT = "conv_out"  # conv output channels

ALL = (BATCH, EMBED, COND, HEADS, HEAD_DIM, MLP, MOD, LAYERS, NORM, PATCH, FREQ, EMBED_OUT, POINTS, LATENT,
       CONV_K, CONV_IN, CONV_OUT)
