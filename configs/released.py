"""Released upstream model configs as ml_collections: ``--config=configs/released.py:ss_flow_img_dit_L_16l8_fp16``.

``get_config(name)`` returns ``ConfigDict(name=<class>, args=<constructor args>)``, the same content as
upstream's ``<name>.json``; ``jaxshape.models.build(name)`` builds the module.
"""
import ml_collections

from jaxshape.models.released import RELEASED, released_args


def get_config(name: str = "ss_flow_img_dit_L_16l8_fp16") -> ml_collections.ConfigDict:
    cls, args = released_args(name)
    return ml_collections.ConfigDict({"name": cls, "args": args, "checkpoint": name})


def available() -> list[str]:
    return sorted(RELEASED)
