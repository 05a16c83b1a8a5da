"""jaxshape: Flax ports of TRELLIS's sparse-structure models and PartPacker's vecset models."""
__version__ = "0.1.0"
