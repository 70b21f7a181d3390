"""Generation data of a version's images when the model payload lacked it: one bounded page of
Civitai's ``/api/v1/images?modelVersionId=...`` (`CivitaiClient.list_version_images_raw`),
stored into the catalog's image rows (matched by URL, else Civitai's image id) so it is asked
for once. Every value stays outside data: shown through `assetmgr.display`, parsed by
`assetmgr.app.genparams`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext

MAX_META_BYTES = 32 << 10
"""One image's generation data as stored, at most (a hostile answer is refused per image)."""
IMAGES_LIMIT = 100


def _meta(item: dict[str, Any]) -> dict[str, Any] | None:
    meta = item.get("meta")
    if not isinstance(meta, dict) or not meta:
        return None
    try:
        size = len(json.dumps(meta))
    except (TypeError, ValueError):
        return None
    return meta if size <= MAX_META_BYTES else None


def fill_generation_data(ctx: AppContext, version_id: int) -> int:
    """Ask Civitai for `version_id`'s images with their generation data and store it into
    their rows; returns how many rows got some. Raises the client's errors."""
    from sqlalchemy import and_, or_, update

    from assetmgr.app.queries.tables import _t
    from catalog.db import session_scope

    image = _t("image")

    items = ctx.client().list_version_images_raw(version_id, limit=IMAGES_LIMIT)
    filled = 0
    with session_scope(ctx.engine, write=True) as session:
        for item in items:
            meta = _meta(item)
            url, image_id = item.get("url"), item.get("id")
            if meta is None or not (isinstance(url, str) or isinstance(image_id, int)):
                continue
            same = []
            if isinstance(url, str) and url:
                same.append(image.c.url == url)
            if isinstance(image_id, int) and not isinstance(image_id, bool):
                same.append(image.c.civitai_id == image_id)
            result = session.execute(
                update(image)
                .where(and_(image.c.version_id == version_id, or_(*same)))
                .values(meta=meta)
            )
            filled += int(getattr(result, "rowcount", 0) or 0)
    return filled
