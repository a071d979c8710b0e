"""Whether the Hugging Face hub may be asked, decided at once: offline settings first, then one short connection.

The hub clients retry for half a minute before they report a machine offline; models and corpora ask here first.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_address() -> tuple[str, int]:
    """(host, port) of the hub endpoint in use (HF_ENDPOINT or huggingface.co)."""
    url = urlparse(hf_constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def offline_by_setting() -> bool:
    """Whether an environment variable (or huggingface_hub's own constant) says this machine is offline."""
    offline = {os.environ.get(v, "").upper() for v in OFFLINE_VARIABLES}
    return bool(hf_constants.HF_HUB_OFFLINE) or bool(offline & {"1", "ON", "YES", "TRUE"})


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub may be asked: not offline by setting, and its host accepts a connection."""
    if offline_by_setting():
        return False
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:
        return False
