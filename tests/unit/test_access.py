"""What the catalog says stands between a version and its download (`catalog.access`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.access import AccessRule, describe, version_access
from catalog.models import Model, ModelVersion

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def rules(model: dict[str, object] | None = None, **version: object) -> list[AccessRule]:
    m = Model(id=1, name="m", type="LORA", **(model or {}))
    v = ModelVersion(id=2, model_id=1, **version)
    return version_access(v, m, now=NOW)


def test_an_open_version_has_no_rules() -> None:
    assert rules(availability="Public", usage_control="Download") == []
    assert rules() == []


def test_early_access_lasts_until_its_deadline() -> None:
    later = NOW + timedelta(days=3)
    assert rules(early_access_deadline=later) == [AccessRule("early_access", later)]
    # A catalog that still says EarlyAccess after the deadline is stale: the download is open.
    assert rules(availability="EarlyAccess", early_access_deadline=NOW - timedelta(1)) == []
    assert rules(availability="EarlyAccess") == [AccessRule("early_access")]
    naive = datetime(2030, 1, 1)  # a row built by hand may hold naive UTC
    assert rules(early_access_deadline=naive) == [
        AccessRule("early_access", naive.replace(tzinfo=UTC))
    ]


def test_downloads_disabled_archived_and_gone() -> None:
    assert rules(usage_control="Generation") == [AccessRule("downloads_disabled")]
    assert rules({"mode": "Archived"}) == [AccessRule("archived")]
    assert rules({"state": "archived"}) == [AccessRule("archived")]
    assert rules({"mode": "TakenDown"}, usage_control="Generation") == [
        AccessRule("gone"),
        AccessRule("downloads_disabled"),
    ]
    assert rules(state="gone") == [AccessRule("gone")]


def test_each_rule_reads_as_one_line() -> None:
    when = datetime(2099, 1, 1, tzinfo=UTC)
    assert describe(AccessRule("early_access", when)) == (
        "early access until 2099-01-01 00:00 UTC: Civitai sells access until then"
    )
    for code in ("early_access", "downloads_disabled", "archived", "gone"):
        text = describe(AccessRule(code))
        assert text and "\n" not in text
