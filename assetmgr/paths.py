"""Every path assetmgr uses on the user's machine, each overridable by the environment."""

from __future__ import annotations

from pathlib import Path

from assetmgr import environment

APP_NAME = "assetmgr"


def home() -> Path:
    """The data root: $ASSETMGR_HOME, else the platform's user data directory."""
    explicit = environment.get("ASSETMGR_HOME")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs  # deferred: only needed when no ASSETMGR_HOME is set

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def database_file() -> Path:
    """The embedded SQLite catalog."""
    return home() / "catalog.sqlite3"


def default_database_url() -> str:
    """$ASSETMGR_DB_URL, else SQLite under the data root."""
    return environment.get("ASSETMGR_DB_URL") or f"sqlite:///{database_file()}"


def config_file() -> Path:
    """The TOML settings file: $ASSETMGR_CONFIG, else ``config.toml`` in the data root."""
    explicit = environment.get("ASSETMGR_CONFIG")
    return Path(explicit).expanduser() if explicit else home() / "config.toml"


def store_dir() -> Path:
    """The content-addressed blob store."""
    return home() / "store"


def image_cache_dir() -> Path:
    """Preview thumbnails and their index (`assetmgr.store.image_cache`)."""
    return home() / "cache" / "images"


def logs_dir() -> Path:
    return home() / "logs"


def sandbox_dir() -> Path:
    """Build context, wheelhouse and per-image caches of the sandbox."""
    return home() / "sandbox"


def plugins_dir() -> Path:
    return home() / "plugins"


def runs_dir() -> Path:
    """Default output folder of generation runs."""
    return home() / "runs"
