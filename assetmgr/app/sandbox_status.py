"""The one verdict on the sandbox image: can a job run, and if not, why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assetmgr.errors import EXPECTED_ERRORS

BUILD_HINT = "run `assetmgr sandbox build`"


@dataclass(frozen=True)
class ServiceState:
    """Whether a service can run, and if not, why (shown verbatim as "not available: …")."""

    available: bool
    reason: str = ""
    note: str = ""
    """A warning while available (say, the image is stale)."""

    def words(self) -> str:
        """The verdict as one line: ``ready``, ``ready; <note>`` or ``not available: <reason>``."""
        if not self.available:
            return f"not available: {self.reason}"
        return f"ready; {self.note}" if self.note else "ready"

    def as_json(self) -> dict[str, object]:
        return {"available": self.available, "reason": self.reason, "note": self.note}


def image_verdict(status: Any) -> ServiceState:
    """The verdict on a `sandbox.status.ImageStatus` (taken with the engine checked)."""
    if status.record is None:
        problem = status.record_problem or "no sandbox image has been built"
        return ServiceState(False, f"{problem} ({BUILD_HINT})")
    if status.engine_reachable is False:
        return ServiceState(False, f"the Docker engine is not reachable: {status.engine_problem}")
    if status.engine_matches is False:
        return ServiceState(False, f"{status.engine_problem} ({BUILD_HINT})")
    if status.stale:
        return ServiceState(True, note="image is stale: " + "; ".join(status.stale_reasons))
    return ServiceState(True)


@dataclass(frozen=True)
class ImageReport:
    """The sandbox image's facts (`sandbox.status.ImageStatus`) and the verdict on them."""

    status: Any
    verdict: ServiceState

    @property
    def needs_build(self) -> bool:
        """Whether `assetmgr sandbox build` is what fixes it (no image, a mismatch, stale)."""
        status = self.status
        mismatch = status.engine_reachable is not False and status.engine_matches is False
        return bool(status.record is None or mismatch or status.stale)


def image_report(sandbox: Any, *, check_engine: bool = True) -> ImageReport:
    """`sandbox status`: the image's facts and `image_verdict` on them (without the engine
    check, nothing is said about the engine)."""
    status = sandbox.image_status(check_engine=check_engine)
    return ImageReport(status, image_verdict(status))


def sandbox_state(sandbox: Any) -> ServiceState:
    """`image_verdict` of the sandbox service's image, or why it cannot be asked."""
    try:
        status = sandbox.image_status(check_engine=True)
    except EXPECTED_ERRORS as exc:
        return ServiceState(False, str(exc))
    return image_verdict(status)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    sha256: str
    trusted: bool = False
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxInfo:
    """What the Sandbox screen shows; each part has a note when it is missing or partial."""

    image: dict[str, str] | None
    image_note: str
    plugins: list[PluginInfo] = field(default_factory=list)
    plugins_note: str = ""
    warm_workers: list[dict[str, str]] = field(default_factory=list)
    warm_note: str = ""


class SandboxStatusInfo:
    """What the Sandbox screen shows, from the sandbox service's `image_status` and Docker."""

    def __init__(self, sandbox: Callable[[], Any]) -> None:
        self._sandbox = sandbox

    def info(self) -> SandboxInfo:
        try:
            status = self._sandbox().image_status(check_engine=True)
        except EXPECTED_ERRORS as exc:
            return SandboxInfo(None, f"not available: {exc}")
        image: dict[str, str] | None = None
        record = status.record
        if record is None:
            note = f"not available: {status.record_problem} (run `assetmgr sandbox build`)"
        else:
            image = {
                "tag": record.tag,
                "image id": record.image_id,
                "torch": record.torch_variant,
                "app version": record.app_version,
                "lock sha256": record.lock_sha256,
                "worker sha256": record.worker_sha256,
                "rootfs sha256": record.rootfs_sha256 or "(digest-pinned base)",
                "base": record.base_ref,
                "layers": str(len(record.layer_diff_ids)),
                "size": f"{record.size_bytes / 2**20:.0f} MiB",
                "built": record.created_at.isoformat(timespec="seconds"),
                "plugin wheels": ", ".join(record.plugin_requirements) or "none",
                "record": str(status.record_path),
            }
            if status.engine_reachable is False:
                note = f"recorded, not checked: {status.engine_problem}"
            elif status.engine_matches is False:
                note = f"MISMATCH: {status.engine_problem}"
            else:
                note = "verified: the engine holds exactly the recorded image"
            if status.stale:
                note += " · stale: " + "; ".join(status.stale_reasons)
        plugins = [
            PluginInfo(p.name, p.version, p.tree_sha256, p.trusted, tuple(p.requirements))
            for p in status.added_plugins
        ]
        plugins_note = "" if plugins else "no plugins added (`assetmgr plugins add DIR`)"
        workers: list[dict[str, str]] = []
        if status.engine_reachable is False:
            warm_note = f"not available: {status.engine_problem}"
        else:
            try:
                from sandbox.runner import LABEL_ROLE

                client = self._sandbox().client
                for container in client.containers.list(
                    filters={"label": f"{LABEL_ROLE}=warm-worker"}
                ):
                    workers.append(
                        {
                            "name": str(container.name),
                            "status": str(container.status),
                            "id": str(container.short_id),
                            "image": str(container.attrs.get("Image", ""))[:19],
                        }
                    )
                warm_note = "" if workers else "no warm worker is running"
            except Exception as exc:  # docker raises many unrelated types
                warm_note = f"not available: cannot list containers: {exc}"
        return SandboxInfo(image, note, plugins, plugins_note, workers, warm_note)
