"""Where weights come from: a local folder, the Hugging Face cache, or the hub when it can be reached.

Lets a missing model fail in a second with a hint, instead of the hub client's retries (about 30 s
offline, per file). Nothing here downloads anything.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger("videograin")


def cached(repo_id: str, filename: str) -> bool:
    """Whether the hub cache holds ``filename`` of ``repo_id`` (no network; False for a name that is no
    hub id, such as a missing local path)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # HFValidationError: not a repo id
        return False


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when the hub is switched off (HF_HUB_OFFLINE) or its host does not answer within ``timeout``
    seconds: one TCP connection."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def obtainable(model: str, filename: str) -> bool:
    """Whether ``model`` (a local folder or a hub id) can be loaded without waiting on a dead network.
    When the hub cannot be reached but the cache holds the model, the hub client is switched to offline
    mode for this process, so the cached files load without its retries (about 30 s per file)."""
    if Path(model).is_dir():
        return True
    if hub_reachable():
        return True
    if cached(model, filename):
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            logger.info("the Hugging Face hub cannot be reached: using the cached files of %s", model)
            constants.HF_HUB_OFFLINE = True
        return True
    return False
