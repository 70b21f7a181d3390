"""What the sandbox keeps between runs, as an interface: added plugins and recorded images.

The service records through a `SandboxRegistry`; the app implements it over its catalog tables
(`assetmgr.sandbox_registry`), tests may use `MemoryRegistry`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sandbox.image.record import ImageRecord


@dataclass(frozen=True)
class PluginFileRecord:
    path: str
    sha256: str
    size: int = 0


@dataclass(frozen=True)
class PluginRecord:
    """One added plugin as recorded: its manifest's facts and every stored file's hash."""

    name: str
    version: str
    entry: str
    tree_sha256: str
    manifest_sha256: str
    manifest_file: str
    hooks: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    description: str = ""
    api_version: int = 1
    file_count: int = 0
    total_bytes: int = 0
    trusted: bool = False
    source_path: str = ""
    store_dir: str | None = None
    """The stored copy's folder (its tree sha256); None for copies stored under old names."""
    added_at: datetime | None = None
    files: tuple[PluginFileRecord, ...] = field(default=())


class SandboxRegistry(Protocol):
    """Where the service records plugins and images; each call is one unit of work."""

    def plugins(self) -> list[PluginRecord]:
        """Every added plugin, by name."""
        ...

    def plugin(self, name: str) -> PluginRecord | None: ...

    def put_plugin(self, record: PluginRecord) -> PluginRecord:
        """Record `record`, replacing the plugin of that name (and its files) if any."""
        ...

    def remove_plugin(self, name: str) -> PluginRecord | None:
        """Forget the plugin; the record it had, or None when there was none."""
        ...

    def set_trusted(self, name: str, trusted: bool) -> PluginRecord | None: ...

    def set_store_dir(self, name: str, store_dir: str) -> None: ...

    def image_record(self, image_id: str) -> str | None:
        """The JSON of the recorded `ImageRecord` with this image id, if any."""
        ...

    def put_image(self, record: ImageRecord) -> None:
        """Record `record` (insert, or refresh the one of the same image id)."""
        ...


class MemoryRegistry:
    """A `SandboxRegistry` in memory (tests, one-off tools)."""

    def __init__(self) -> None:
        self._plugins: dict[str, PluginRecord] = {}
        self._images: dict[str, str] = {}
        self._lock = threading.Lock()

    def plugins(self) -> list[PluginRecord]:
        with self._lock:
            return [self._plugins[n] for n in sorted(self._plugins)]

    def plugin(self, name: str) -> PluginRecord | None:
        with self._lock:
            return self._plugins.get(name)

    def put_plugin(self, record: PluginRecord) -> PluginRecord:
        stored = replace(record, added_at=record.added_at or datetime.now(UTC))
        with self._lock:
            self._plugins[record.name] = stored
        return stored

    def remove_plugin(self, name: str) -> PluginRecord | None:
        with self._lock:
            return self._plugins.pop(name, None)

    def set_trusted(self, name: str, trusted: bool) -> PluginRecord | None:
        return self._update(name, trusted=trusted)

    def set_store_dir(self, name: str, store_dir: str) -> None:
        self._update(name, store_dir=store_dir)

    def _update(self, name: str, **changes: object) -> PluginRecord | None:
        with self._lock:
            found = self._plugins.get(name)
            if found is None:
                return None
            self._plugins[name] = replace(found, **changes)  # type: ignore[arg-type]
            return self._plugins[name]

    def image_record(self, image_id: str) -> str | None:
        with self._lock:
            return self._images.get(image_id)

    def put_image(self, record: ImageRecord) -> None:
        with self._lock:
            self._images[record.image_id] = record.model_dump_json()


__all__ = ["MemoryRegistry", "PluginFileRecord", "PluginRecord", "SandboxRegistry"]
