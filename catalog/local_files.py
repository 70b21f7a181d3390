"""Keeping `LocalFile` rows true to the catalog files they are attached to."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from catalog.models import LocalFile, ModelFile

_LOCAL: Table = LocalFile.__table__  # type: ignore[attr-defined]
_FILE: Table = ModelFile.__table__  # type: ignore[attr-defined]
_CHUNK = 500


def detach_changed(session: Session, file_ids: Sequence[int]) -> int:
    """Detach verified local files from catalog files whose SHA256 no longer matches them.

    Called after Civitai's data rewrote `file_ids`: a local file attached to one of them on a
    sidecar's word (or before Civitai replaced the file) is not that file any more. It stays in
    the store as a local-only blob (``file_id`` NULL); the version shows as not downloaded.
    Returns how many rows were detached.
    """
    catalog_sha256 = (
        select(func.upper(_FILE.c.sha256)).where(_FILE.c.id == _LOCAL.c.file_id).scalar_subquery()
    )
    detached = 0
    ids = list(dict.fromkeys(file_ids))
    for start in range(0, len(ids), _CHUNK):
        outcome = session.execute(
            update(_LOCAL)
            .where(
                _LOCAL.c.file_id.in_(ids[start : start + _CHUNK]),
                _LOCAL.c.state == "verified",
                catalog_sha256.is_not(None),
                catalog_sha256 != _LOCAL.c.sha256,
            )
            .values(file_id=None)
        )
        detached += int(getattr(outcome, "rowcount", 0) or 0)
    return detached


__all__ = ["detach_changed"]
