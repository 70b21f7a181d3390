"""`AppContext`: the services one session of the CLI or the TUI works with, built lazily."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from assetmgr import paths
from assetmgr.app.workers import PER_JOB, WorkerPolicy, apply_policy
from assetmgr.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from assetmgr.app.previews import PreviewService
    from assetmgr.store.blobs import BlobStore
    from assetmgr.store.service import StoreService
    from catalog.civitai.client import CivitaiClient

    ClientFactory = Callable[[], CivitaiClient]
    """Builds the Civitai client (tests hand in one for the fake)."""


class AppContext:
    """Settings, the catalog engine, the blob store, the Civitai client, the store service and
    the sandbox service, each built on first use; `close` releases what was built.

    Tests hand in the parts they replace at the edge (an engine, a client factory for the fake
    Civitai, a job runner in place of the sandbox service). `worker_policy` says whether the
    sandbox service it builds keeps a warm worker (`assetmgr.app.workers`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        store: BlobStore | None = None,
        client_factory: ClientFactory | None = None,
        sandbox: Any = None,
        worker_policy: WorkerPolicy = PER_JOB,
    ) -> None:
        self.settings = settings
        self.worker_policy = worker_policy
        self._engine = engine
        self._store = store
        self._client_factory = client_factory
        self._client: CivitaiClient | None = None
        self._store_service: StoreService | None = None
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._previews: PreviewService | None = None
        self._lock = threading.RLock()

    def __enter__(self) -> AppContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from assetmgr.context import open_engine

                self._engine = open_engine(self.settings)
            return self._engine

    @property
    def store(self) -> BlobStore:
        with self._lock:
            if self._store is None:
                from assetmgr.store.blobs import BlobStore

                self._store = BlobStore(paths.store_dir())
            return self._store

    def client(self) -> CivitaiClient:
        with self._lock:
            if self._client is None:
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    from assetmgr.context import make_client

                    self._client = make_client(self.settings)
            return self._client

    def store_service(self) -> StoreService:
        with self._lock:
            if self._store_service is None:
                from assetmgr.store.service import StoreService

                self._store_service = StoreService(
                    self.engine,
                    self.store,
                    self.client(),
                    max_download_bytes=self.settings.max_download_bytes,
                )
            return self._store_service

    def previews(self) -> PreviewService:
        """Preview images: the image cache, fetching, placeholders (`assetmgr.app.previews`)."""
        with self._lock:
            if self._previews is None:
                from assetmgr.app.previews import PreviewService

                self._previews = PreviewService(self)
            return self._previews

    @property
    def sandbox(self) -> Any:
        """The sandbox service (`assetmgr.context.open_sandbox_service`): plugins, the image
        record, and the job runner generation goes through."""
        with self._lock:
            if self._sandbox is None:
                from assetmgr.context import open_sandbox_service

                self._sandbox = open_sandbox_service(self.settings, self.engine)
                apply_policy(self._sandbox, self.worker_policy)
            return self._sandbox

    def set_worker_policy(self, policy: WorkerPolicy) -> None:
        """Use `policy` from now on (the sandbox service it built follows at once)."""
        with self._lock:
            self.worker_policy = policy
            if self._sandbox is not None and self._owns_sandbox:
                apply_policy(self._sandbox, policy)

    def reload_settings(self) -> None:
        """Re-read settings (the Settings screen saved them); the client is rebuilt on use."""
        self.settings = Settings.load(api_base=self.settings.api_base)
        with self._lock:
            old, self._client = self._client, None
            service, self._store_service = self._store_service, None
            self._previews = None  # the cache's cap and the threshold may have changed
        if service is not None:
            service.close()
        if old is not None:
            old.close()

    def close(self) -> None:
        with self._lock:
            service, self._store_service = self._store_service, None
            client, self._client = self._client, None
            sandbox = self._sandbox if self._owns_sandbox else None
            if self._owns_sandbox:
                self._sandbox = None
        if service is not None:
            service.close()
        if client is not None:
            client.close()
        if sandbox is not None:
            sandbox.close()
