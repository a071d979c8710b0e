"""Routes: MoE routing as control (control/content split, expert paths, probes)."""

from anatomist.routes.control import MoELayer, control_content, find_moe_layers, moe_layer, router_basis

__all__ = ["MoELayer", "control_content", "find_moe_layers", "moe_layer", "router_basis"]
