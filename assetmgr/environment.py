"""The one module that reads the process environment: every variable assetmgr knows, with
what it means. Settings (`assetmgr.config`), locations (`assetmgr.paths`), the sandbox's
paths (`assetmgr.context`) and the front ends' flags all read through `get` and `flag`;
a test fails on any other `os.environ` read on the host."""

from __future__ import annotations

import os
from typing import Final

VARIABLES: Final[dict[str, str]] = {
    "ASSETMGR_HOME": "the data folder (catalog, store, logs, runs, plugins, sandbox)",
    "ASSETMGR_CONFIG": "the TOML settings file (default: config.toml in the data folder)",
    "ASSETMGR_DB_URL": "the catalog's database URL (default: SQLite in the data folder)",
    "ASSETMGR_NO_KEYRING": "set: never use the system keyring for the API key",
    "ASSETMGR_MAX_DOWNLOAD_SIZE": "the largest file a download may write (bytes or 64GiB)",
    "ASSETMGR_SYNC_WORKERS": "page worker processes for a large sync (0: none)",
    "ASSETMGR_WARM_WORKER_IDLE": "how long the TUI keeps an unused warm worker (600, 10m; 0: off)",
    "ASSETMGR_SANDBOX_RECORD": "the sandbox image record (default: sandbox/image.json)",
    "ASSETMGR_SANDBOX_CACHE": "the sandbox build caches (default: sandbox/cache)",
    "ASSETMGR_SANDBOX_MODEL_TRANSPORT": "how models reach a job: auto, bind or volume",
    "ASSETMGR_DEBUG": "set: an unexpected error shows its traceback",
    "ASSETMGR_FORCE_PROGRESS": "set: progress bars even when stderr is not a terminal",
    "CIVITAI_API_KEY": "the Civitai API key (wins over the keyring and the config file)",
    "CIVITAI_API_BASE": "the Civitai API's base URL",
}


def get(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not an assetmgr environment variable")
    return os.environ.get(name) or None


def flag(name: str) -> bool:
    """Whether the variable is set to anything non-empty."""
    return get(name) is not None
