"""The library reports: newer versions of local models, and local files that are the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext
    from catalog.updates import UpdateInfo


@dataclass(frozen=True)
class UpdatesReport:
    """Models whose newest version (same base-model family) is not local, and how many
    verified local files there are (none: nothing to update)."""

    updates: list[UpdateInfo]
    local_files: int

    def as_json(self) -> list[dict[str, Any]]:
        return [u.as_json() for u in self.updates]

    def pull_offers(self) -> list[tuple[int, int, str]]:
        """(model id, newest version id, "name: local → newest") per update, for a picker."""
        return [
            (
                int(u.model_id),
                int(u.newest_version_id),
                f"{u.model_name}: {u.local_version_name} → {u.newest_version_name}",
            )
            for u in self.updates
        ]


@dataclass(frozen=True)
class DuplicatesReport:
    """Local files with the same bytes (``by_sha256``) or the same tensors (``by_autov3``)."""

    groups: dict[str, list[dict[str, Any]]]
    local_files: int

    @property
    def empty(self) -> bool:
        return not self.groups["by_sha256"] and not self.groups["by_autov3"]


def find_updates(ctx: AppContext) -> UpdatesReport:
    from catalog.db import session_scope
    from catalog.updates import count_verified_local
    from catalog.updates import find_updates as find

    with session_scope(ctx.engine) as session:
        return UpdatesReport(find(session), count_verified_local(session))


def find_duplicates(ctx: AppContext) -> DuplicatesReport:
    from catalog.db import session_scope
    from catalog.updates import count_verified_local
    from catalog.updates import find_duplicates as find

    with session_scope(ctx.engine) as session:
        return DuplicatesReport(find(session), count_verified_local(session))


__all__ = ["DuplicatesReport", "UpdatesReport", "find_duplicates", "find_updates"]
