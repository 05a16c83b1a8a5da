"""The models, one file per upstream model; class names and fields follow upstream so official configs construct
them. ``build`` makes one by class or released-checkpoint name; ``load`` / ``save`` are the front door for weights
(saved and converted models, training workdirs)."""
from jaxshape.models.dino_vit import DinoViT, encode_condition, image_condition
from jaxshape.models.registry import MODEL_CLASSES, build, model_spec
from jaxshape.models.sparse_structure_flow import SparseStructureFlowModel
from jaxshape.models.sparse_structure_vae import SparseStructureDecoder, SparseStructureEncoder
from jaxshape.models.store import components, load, load_all, save
from jaxshape.models.vecset_dit import VecSetDiT
from jaxshape.models.vecset_vae import VecSetVAE

__all__ = ["MODEL_CLASSES", "DinoViT", "SparseStructureDecoder", "SparseStructureEncoder", "SparseStructureFlowModel",
           "VecSetDiT", "VecSetVAE", "build", "components", "encode_condition", "image_condition", "load", "load_all",
           "model_spec", "save"]
