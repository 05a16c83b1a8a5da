"""Upstream PyTorch checkpoints <-> jaxshape Flax variables."""
from jaxshape.convert.readers import load_state_dict, read_model_json, strip_prefix
from jaxshape.convert.state_dict import (
    ConversionError,
    abstract_variables,
    expected_state_dict_shapes,
    from_torch,
    to_torch,
)

__all__ = ["ConversionError", "abstract_variables", "expected_state_dict_shapes", "from_torch",
           "load_state_dict", "read_model_json", "strip_prefix", "to_torch"]
