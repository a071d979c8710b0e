"""Mechanisms in parameters: rank-one subcomponents of weights, found by SPD, APD or L3D.

>>> from anatomist.mechanisms import spd
>>> dec = spd.decompose(model, data, targets=["layers.*.mlp_in"], config=spd.SPDConfig(C=100))
>>> dec.matrices("layers.0.mlp_in")   # [C, d_out, d_in]
"""

from anatomist.mechanisms.components import Decomposition, Target, find_targets, layer_weight, model_output

__all__ = [
    "Decomposition",
    "Target",
    "find_targets",
    "layer_weight",
    "model_output",
]
