"""The networks we take apart: sites on any PyTorch model, packaged real models, toys with ground truth."""

from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import (
    Site,
    SiteInfo,
    capture,
    get_module,
    list_sites,
    record,
    replace_forward,
    run_and_capture,
    splice,
)

__all__ = ["LoadedModel", "load_model", "Site", "SiteInfo", "capture", "get_module", "list_sites", "record",
           "replace_forward", "run_and_capture", "splice"]
