"""The networks we take apart: sites on any PyTorch model, packaged real models, toys with ground truth."""

from anatomist.nets.sites import Site, SiteInfo, capture, get_module, list_sites, splice

__all__ = ["Site", "SiteInfo", "capture", "get_module", "list_sites", "splice"]
