"""What the TUI calls to do work: the application layer's context and use cases.

No Textual here. `Services` is the app's `AppContext` plus the two use-case objects the
Generate and Sandbox screens talk to; tests replace only the edges (the job runner, the
Civitai client), never the use cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from assetmgr.app.context import AppContext
from assetmgr.app.generate import (
    SAMPLERS,
    GenerateRequest,
    Generation,
    GenerationCheck,
    GenerationProgress,
    ProgressFn,
    RunRecord,
)
from assetmgr.app.sandbox_status import PluginInfo, SandboxInfo, SandboxStatusInfo, ServiceState
from assetmgr.app.workers import tui_policy
from assetmgr.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from assetmgr.app.context import ClientFactory
    from assetmgr.store.blobs import BlobStore


class Services(AppContext):
    """Everything the TUI's workers call; built from `Settings`, with test edges handed in."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        *,
        store: BlobStore | None = None,
        client_factory: ClientFactory | None = None,
        runner: Any = None,
        sandbox_info: Any = None,
    ) -> None:
        super().__init__(
            settings,
            engine=engine,
            store=store,
            client_factory=client_factory,
            sandbox=runner,
            worker_policy=tui_policy(settings),
        )
        self.generation = Generation(self)
        self.sandbox_info: Any = sandbox_info or SandboxStatusInfo(lambda: self.sandbox)

    def reload_settings(self) -> None:
        super().reload_settings()
        self.set_worker_policy(tui_policy(self.settings))  # the idle time may have changed

    def import_state(self) -> ServiceState:
        try:
            import assetmgr.store.importer  # noqa: F401
        except ImportError as exc:
            return ServiceState(False, f"the store has no importer ({exc})")
        return ServiceState(True)


__all__ = [
    "SAMPLERS",
    "GenerateRequest",
    "Generation",
    "GenerationCheck",
    "GenerationProgress",
    "PluginInfo",
    "ProgressFn",
    "RunRecord",
    "SandboxInfo",
    "SandboxStatusInfo",
    "ServiceState",
    "Services",
]
