"""Model families; class names and fields follow upstream so official configs construct them."""
from jaxshape.models.sparse_structure_flow import SparseStructureFlowModel
from jaxshape.models.sparse_structure_vae import SparseStructureDecoder, SparseStructureEncoder
from jaxshape.models.vecset_dit import VecSetDiT
from jaxshape.models.vecset_vae import DiagonalGaussian, DummyLatent, VecSetVAE

__all__ = ["DiagonalGaussian", "DummyLatent", "SparseStructureDecoder", "SparseStructureEncoder",
           "SparseStructureFlowModel", "VecSetDiT", "VecSetVAE"]
