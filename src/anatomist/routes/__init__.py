"""Routes: MoE routing as control (control/content split, expert paths, probes, the whole analysis)."""

from anatomist.routes.analysis import AnalyzeConfig, analyze, summary
from anatomist.routes.control import MoELayer, control_content, find_moe_layers, moe_layer, router_basis

__all__ = [
    "AnalyzeConfig",
    "MoELayer",
    "analyze",
    "control_content",
    "find_moe_layers",
    "moe_layer",
    "router_basis",
    "summary",
]
