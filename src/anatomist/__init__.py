"""anatomist: take trained neural networks apart into units a person can study."""

from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import Site, capture, list_sites, splice

__version__ = "0.1.0"

__all__ = ["AnatomistError", "Site", "capture", "list_sites", "splice", "__version__"]
