"""The two model families and their training stages, named once.

* ``SPARSE_STRUCTURE``: TRELLIS's sparse-structure conv3d VAE (occupancy grid <-> latent grid) and flow DiT.
* ``VECSET``: PartPacker's perceiver VAE (point cloud -> latent token set -> SDF queries) and DiT.

Everything in jaxshape says "sparse_structure" / "vecset" for the family (data targets, record fields, tasks);
the training stages are ``<prefix>_vae`` and ``<prefix>_flow`` with TRELLIS's own abbreviation ``ss`` (its
checkpoints are ``ss_enc``, ``ss_dec``, ``ss_flow``). The upstream project names ``"trellis"`` and
``"partpacker"`` appear only where they select upstream conventions: parameter names (``naming=`` of the shared
blocks) and sampler / noise conventions (``convention=`` of ``jaxshape.flow``).
"""
from __future__ import annotations

import dataclasses

SPARSE_STRUCTURE = "sparse_structure"
VECSET = "vecset"

SS_VAE = "ss_vae"
SS_FLOW = "ss_flow"
VECSET_VAE = "vecset_vae"
VECSET_FLOW = "vecset_flow"


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # SPARSE_STRUCTURE or VECSET
    vae_stage: str
    flow_stage: str
    upstream: str  # the upstream convention it follows: "trellis" or "partpacker"
    mesh_bound: float  # half-extent of a mesh's longest side after normalisation (TRELLIS 0.5, PartPacker 0.95)


FAMILIES = {
    SPARSE_STRUCTURE: Family(SPARSE_STRUCTURE, SS_VAE, SS_FLOW, "trellis", 0.5),
    VECSET: Family(VECSET, VECSET_VAE, VECSET_FLOW, "partpacker", 0.95),
}
STAGES = (SS_VAE, SS_FLOW, VECSET_VAE, VECSET_FLOW)


def family_of_stage(stage: str) -> Family:
    """The family a training stage belongs to; an unknown stage is an error naming the known ones."""
    for fam in FAMILIES.values():
        if stage in (fam.vae_stage, fam.flow_stage):
            return fam
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def check_families(names, what: str) -> tuple:
    """``names`` as a tuple after checking each is a family name (``what`` names the input in the error)."""
    names = tuple(names)
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise ValueError(f"{what} must name families from {tuple(FAMILIES)}, got {names!r}")
    return names
