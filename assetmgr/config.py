"""Settings: the environment first, then the config file, then defaults.

The Civitai API key is looked up in this order: ``CIVITAI_API_KEY``, the OS keyring
(service ``assetmgr``, user ``civitai``), then ``civitai_api_key`` in the config file (written
with mode 0600, and only when no keyring backend works). It never goes to the database, the
logs, the sandbox or a logged URL.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assetmgr import environment, paths
from assetmgr.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://civitai.com"
KEYRING_SERVICE = "assetmgr"
KEYRING_USER = "civitai"
DEFAULT_MAX_DOWNLOAD_BYTES = 64 << 30
"""The most one download may bring unless configured: room for the largest checkpoints."""
DEFAULT_PREVIEW_CACHE_BYTES = 512 << 20
"""The image cache's cap unless configured: some ten thousand preview thumbnails."""
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
DEFAULT_WARM_WORKER_IDLE_S = 600.0
"""How long the TUI keeps an unused warm worker (its container and GPU memory) by default."""
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_size(value: object) -> int | None:
    """Bytes from ``64GiB``, ``500 MB``, ``1048576`` or an int; None if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    match = _SIZE_RE.fullmatch(str(value))
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        return None
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    return size if size > 0 else None


def parse_duration(value: object) -> float | None:
    """Seconds from ``600``, ``90s``, ``10m``, ``1h`` or a number; None if unusable (0 is 0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    match = _SIZE_RE.fullmatch(str(value))
    if match is None or match.group(2).lower() not in _DURATION_UNITS:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The config file as a dict; missing means empty, malformed is a `ConfigError`."""
    config_path = path or paths.config_file()
    try:
        with open(config_path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {config_path}: {exc}",
            hint="Fix or delete the file; `assetmgr config show` prints the settings in use.",
        ) from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config_file(values: dict[str, Any], path: Path | None = None) -> Path:
    """Write a flat TOML file atomically with mode 0600 (it may hold the API key)."""
    config_path = path or paths.config_file()
    config_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = config_path.with_suffix(".tmp")
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in sorted(values.items()) if v is not None)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.replace(tmp_path, config_path)
    return config_path


def _keyring_get() -> str | None:
    if environment.flag("ASSETMGR_NO_KEYRING"):
        return None
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, KEYRING_USER)
    except Exception as exc:  # no backend, locked store, dbus missing: all mean "not there"
        log.debug("keyring unavailable: %s", type(exc).__name__)
        return None


def store_api_key(key: str) -> str:
    """Save the key in the keyring, else in the config file; returns where it went."""
    if not environment.flag("ASSETMGR_NO_KEYRING"):
        try:
            import keyring
            from keyring.backends.fail import Keyring as FailKeyring

            if not isinstance(keyring.get_keyring(), FailKeyring):
                keyring.set_password(KEYRING_SERVICE, KEYRING_USER, key)
                return "keyring"
        except Exception as exc:
            log.debug("keyring unavailable: %s", type(exc).__name__)
    values = read_config_file()
    values["civitai_api_key"] = key
    write_config_file(values)
    return "config file"


def mask_secret(secret: str | None) -> str:
    """Show a key as ``abcd…wxyz`` at most; short keys become ``****``."""
    if not secret:
        return "(none)"
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…{secret[-4:]}"


@dataclass(frozen=True)
class Settings:
    """What the CLI and the TUI hand to the services."""

    home: Path
    database_url: str
    api_base: str = DEFAULT_API_BASE
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str = "none"
    download_concurrency: int = 3
    sync_concurrency: int = 4
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    """The most one download may bring (``ASSETMGR_MAX_DOWNLOAD_SIZE``, ``max_download_size``)."""
    sync_workers: str = ""
    """``ASSETMGR_SYNC_WORKERS`` as given (empty: the default); the sync use case reads it."""
    preview_cache_bytes: int = DEFAULT_PREVIEW_CACHE_BYTES
    """The image cache's cap (``preview_cache_size`` in the config file)."""
    nsfw_threshold: str = "PG"
    """The mildest NSFW level held back from view and bulk fetches is the one above this
    (``nsfw_threshold``: PG, PG-13, R, X or XXX; `catalog.nsfw`)."""
    warm_worker_idle_s: float = DEFAULT_WARM_WORKER_IDLE_S
    """How long the TUI keeps an unused warm worker (``ASSETMGR_WARM_WORKER_IDLE``,
    ``warm_worker_idle``); 0: a container per job."""

    @property
    def database_url_shown(self) -> str:
        """`database_url` as it may be shown or logged: any password replaced by ``***``."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.database_url).render_as_string(hide_password=True)
        except Exception:  # an unparseable URL may still hold a secret: show none of it
            return "(unparseable URL)"

    @classmethod
    def load(cls, *, api_base: str | None = None, database_url: str | None = None) -> Settings:
        values = read_config_file()
        key_source = "none"
        api_key = environment.get("CIVITAI_API_KEY")
        if api_key:
            key_source = "environment"
        else:
            api_key = _keyring_get()
            if api_key:
                key_source = "keyring"
            elif values.get("civitai_api_key"):
                api_key = str(values["civitai_api_key"])
                key_source = "config file"
        base = (
            api_base
            or environment.get("CIVITAI_API_BASE")
            or values.get("api_base")
            or DEFAULT_API_BASE
        )
        db_url = (
            database_url
            or environment.get("ASSETMGR_DB_URL")
            or values.get("database_url")
            or paths.default_database_url()
        )
        try:
            download_concurrency = int(values.get("download_concurrency", 3))
            sync_concurrency = int(values.get("sync_concurrency", 4))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad concurrency setting in {paths.config_file()}: {exc}") from exc
        raw_max = environment.get("ASSETMGR_MAX_DOWNLOAD_SIZE") or values.get(
            "max_download_size", DEFAULT_MAX_DOWNLOAD_BYTES
        )
        max_download_bytes = parse_size(raw_max)
        if max_download_bytes is None:
            raise ConfigError(
                f"bad maximum download size {str(raw_max)[:40]!r}",
                hint="Give ASSETMGR_MAX_DOWNLOAD_SIZE or max_download_size as bytes or with a "
                "unit, e.g. 64GiB or 500MB.",
            )
        preview_cache_bytes, nsfw_threshold = _preview_settings(values)
        raw_idle = environment.get("ASSETMGR_WARM_WORKER_IDLE") or values.get(
            "warm_worker_idle", DEFAULT_WARM_WORKER_IDLE_S
        )
        warm_worker_idle_s = parse_duration(raw_idle)
        if warm_worker_idle_s is None:
            raise ConfigError(
                f"bad warm worker idle time {str(raw_idle)[:40]!r}",
                hint="Give ASSETMGR_WARM_WORKER_IDLE or warm_worker_idle as seconds or with a "
                "unit, e.g. 600, 90s, 10m or 1h (0: a container per job).",
            )
        _register_secrets(api_key, str(db_url))
        return cls(
            home=paths.home(),
            database_url=str(db_url),
            api_base=str(base).rstrip("/"),
            api_key=api_key,
            api_key_source=key_source,
            download_concurrency=max(1, download_concurrency),
            sync_concurrency=max(1, sync_concurrency),
            max_download_bytes=max_download_bytes,
            sync_workers=(environment.get("ASSETMGR_SYNC_WORKERS") or "").strip(),
            preview_cache_bytes=preview_cache_bytes,
            nsfw_threshold=nsfw_threshold,
            warm_worker_idle_s=warm_worker_idle_s,
        )

    @property
    def nsfw_threshold_level(self) -> int:
        """`nsfw_threshold` as Civitai's level bit (`catalog.nsfw`)."""
        from catalog.nsfw import LEVELS

        return LEVELS[self.nsfw_threshold]


def _preview_settings(values: dict[str, Any]) -> tuple[int, str]:
    """The image cache's cap and the NSFW threshold from the config file, checked."""
    from catalog.nsfw import DEFAULT_THRESHOLD, LEVELS, parse_threshold

    raw_cap = values.get("preview_cache_size", DEFAULT_PREVIEW_CACHE_BYTES)
    cap = parse_size(raw_cap)
    if cap is None:
        raise ConfigError(
            f"bad preview cache size {str(raw_cap)[:40]!r} in {paths.config_file()}",
            hint="Give preview_cache_size as bytes or with a unit, e.g. 512MiB or 2GB.",
        )
    raw_threshold = values.get("nsfw_threshold", DEFAULT_THRESHOLD)
    level = parse_threshold(raw_threshold)
    if level is None:
        raise ConfigError(
            f"bad NSFW threshold {str(raw_threshold)[:40]!r} in {paths.config_file()}",
            hint="Set nsfw_threshold to one of " + ", ".join(LEVELS) + ".",
        )
    name = next(k for k, v in LEVELS.items() if v == level)
    return cap, name


def _register_secrets(api_key: str | None, database_url: str) -> None:
    """The key and the database password are masked in every log record from now on."""
    from urllib.parse import urlsplit

    from assetmgr.logs import register_secret

    register_secret(api_key)
    try:
        register_secret(urlsplit(database_url).password)
    except ValueError:  # not a URL with a parseable netloc: nothing to mask
        pass
