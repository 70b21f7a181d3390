"""Removing what crashed or finished jobs left behind, found by label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors

from sandbox.engine import engine_client
from sandbox.labels import (
    LABEL_COMPILE_CACHE,
    LABEL_JOB,
    LABEL_MODEL_SHA256,
    LABEL_PLUGIN_SHA256,
    LABEL_SESSION,
    RUN_COPIES_DIR,
    SESSION_ID,
)
from sandbox.plugins import remove_tree
from sandbox.transport import _VOLUME_KINDS, _remove_volume


@dataclass
class PruneReport:
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    model_volumes: list[str] = field(default_factory=list)
    plugin_volumes: list[str] = field(default_factory=list)
    compile_caches: list[str] = field(default_factory=list)


def prune(
    client: Any = None,
    *,
    session: str | None = None,
    include_running: bool = True,
    models: bool = False,
) -> PruneReport:
    """Remove stray job containers and volumes found by label (all sessions, or one).

    With ``include_running=False`` running containers (another process's jobs or warm workers)
    and the volumes they use are left alone. With `models` the model and plugin volumes of the
    volume transport (`LABEL_MODEL_SHA256`, `LABEL_PLUGIN_SHA256`; of `session` only, if given)
    go too, except those a container that is still there mounts a file or directory of (jobs
    mount the model file or plugin directory, not the volume, so the engine alone would not
    refuse). GPU jobs' compile caches (`LABEL_COMPILE_CACHE`) go with `models` as well; the
    engine itself keeps one that a container still mounts.
    """
    client = client or engine_client()
    label = f"{LABEL_JOB}" if session is None else f"{LABEL_SESSION}={session}"
    report = PruneReport()
    _prune_job_containers(client, label, include_running, report)
    _prune_job_volumes(client, label, report)
    if models:
        _prune_kept_volumes(client, label if session is not None else None, report)
    return report


def _prune_job_containers(
    client: Any, label: str, include_running: bool, report: PruneReport
) -> None:
    for ct in client.containers.list(all=True, filters={"label": label}):
        if LABEL_JOB not in (ct.labels or {}):
            continue
        if not include_running and ct.status in ("running", "restarting", "paused"):
            continue
        try:
            ct.remove(force=True, v=True)
            report.containers.append(ct.name)
        except docker.errors.APIError:
            pass


def _prune_job_volumes(client: Any, label: str, report: PruneReport) -> None:
    for vol in client.volumes.list(filters={"label": label}):
        if LABEL_JOB not in ((vol.attrs or {}).get("Labels") or {}):
            continue
        try:
            vol.remove(force=True)
            report.volumes.append(vol.name)
        except docker.errors.APIError:
            pass


def _volumes_in_use(client: Any) -> set[str]:
    """Model and plugin volumes that a job container still there mounts a member of."""
    in_use: set[str] = set()
    members = {member for _label, member in _VOLUME_KINDS.values()}
    for ct in client.containers.list(all=True, filters={"label": LABEL_JOB}):
        for m in (ct.attrs or {}).get("Mounts") or []:
            parts = PurePosixPath(str(m.get("Source") or "")).parts
            if len(parts) >= 3 and parts[-2] == "_data" and parts[-1] in members:
                in_use.add(parts[-3])
    return in_use


def _prune_kept_volumes(client: Any, session_label: str | None, report: PruneReport) -> None:
    """Model and plugin volumes and compile caches (of one session if given), unless in use."""
    in_use = _volumes_in_use(client)
    for kind_label, removed in (
        (LABEL_MODEL_SHA256, report.model_volumes),
        (LABEL_PLUGIN_SHA256, report.plugin_volumes),
        (LABEL_COMPILE_CACHE, report.compile_caches),
    ):
        filters = [kind_label] + ([session_label] if session_label is not None else [])
        for vol in client.volumes.list(filters={"label": filters}):
            if kind_label not in ((vol.attrs or {}).get("Labels") or {}):
                continue
            if vol.name in in_use or not _remove_volume(vol):
                continue
            removed.append(vol.name)


def prune_plugin_copies(client: Any, plugins_root: Path) -> list[str]:
    """Remove per-run plugin copies (bind transport) that no container can still be using.

    Each copy's directory starts with its host process's session id; copies of this process,
    or of a session that still has a container, stay.
    """
    run_root = plugins_root / RUN_COPIES_DIR
    try:
        entries = sorted(run_root.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        session = entry.name.split("-", 1)[0]
        if session == SESSION_ID:
            continue
        label = f"{LABEL_SESSION}={session}"
        if client.containers.list(all=True, filters={"label": label}):
            continue
        remove_tree(entry)
        removed.append(entry.name)
    return removed
