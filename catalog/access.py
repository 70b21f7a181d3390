"""What stands between a version and its download, from what the catalog already holds.

Civitai's data says when a version is in early access (``availability``, the
``earlyAccessDeadline`` while it lasts), when its creator allows only on-site generation
(``usageControl`` other than ``Download``: the download answers 401 "disabled"), and when its
model is archived (410) or gone (404). Whether a file needs a login is a creator option the
API does not publish: it shows only when a download without a key is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from catalog.models import Model, ModelVersion

EARLY_ACCESS = "early_access"
"""Civitai sells access until `until` (or an unknown date); a download without it gets 403."""
DOWNLOADS_DISABLED = "downloads_disabled"
"""The creator allows only generation on Civitai; a download gets 401."""
ARCHIVED = "archived"
"""The model is archived; a download gets 410."""
GONE = "gone"
"""The model or version was taken down or left Civitai; a download gets 404."""
ACCESS_CODES: tuple[str, ...] = (EARLY_ACCESS, DOWNLOADS_DISABLED, ARCHIVED, GONE)


@dataclass(frozen=True)
class AccessRule:
    """One reason a download will be refused, with the date it ends when Civitai says."""

    code: str
    until: datetime | None = None


def version_access(
    version: ModelVersion, model: Model | None, *, now: datetime | None = None
) -> list[AccessRule]:
    """The reasons Civitai will refuse to download this version, most final first."""
    now = now or datetime.now(UTC)
    rules: list[AccessRule] = []
    states = {version.state, model.state if model else None}
    if (model is not None and model.mode == "TakenDown") or states & {"taken_down", "gone"}:
        rules.append(AccessRule(GONE))
    elif (model is not None and model.mode == "Archived") or "archived" in states:
        rules.append(AccessRule(ARCHIVED))
    if version.usage_control and version.usage_control != "Download":
        rules.append(AccessRule(DOWNLOADS_DISABLED))
    deadline = version.early_access_deadline
    if deadline is not None and deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    if deadline is not None and deadline > now:
        rules.append(AccessRule(EARLY_ACCESS, deadline))
    elif deadline is None and version.availability == "EarlyAccess":
        rules.append(AccessRule(EARLY_ACCESS))
    return rules


def record_refusal(
    session: Session, version_id: int, code: str, *, until: datetime | None = None
) -> None:
    """Keep what a refused download taught about a version, so the next look shows it first.

    A listing sync does not carry ``usageControl``, so a version read from a listing learns
    "downloads disabled" only here; a later standalone read of the version (a lookup, a pull
    of an unknown version) writes Civitai's own value over it, as the next sync does for early
    access and the archived mode.
    """
    version = session.get(ModelVersion, version_id)
    if version is None:
        return
    if code == DOWNLOADS_DISABLED and version.usage_control in (None, "Download"):
        # Any value but "Download" means downloads are off; the refusal does not say which.
        version.usage_control = "Generation"
    elif code == EARLY_ACCESS:
        version.availability = "EarlyAccess"
        if until is not None:
            version.early_access_deadline = until
    elif code == ARCHIVED and version.model is not None:
        version.model.mode = "Archived"


def describe(rule: AccessRule) -> str:
    """A short phrase for the front ends: ``early access until 2026-09-01 …``."""
    if rule.code == EARLY_ACCESS:
        if rule.until is None:
            return "early access: Civitai sells access for now (no end date given)"
        return (
            f"early access until {rule.until:%Y-%m-%d %H:%M} UTC: Civitai sells access until then"
        )
    if rule.code == DOWNLOADS_DISABLED:
        return "downloads disabled by the creator (generation on Civitai only)"
    if rule.code == ARCHIVED:
        return "archived on Civitai: no downloads"
    return "removed from Civitai: no downloads"


__all__ = [
    "ACCESS_CODES",
    "ARCHIVED",
    "DOWNLOADS_DISABLED",
    "EARLY_ACCESS",
    "GONE",
    "AccessRule",
    "describe",
    "record_refusal",
    "version_access",
]
