"""`assetmgr sync`: fill the local catalog from the Civitai API.

The parts: `request` (what to sync, progress, summary), `run` (`run_sync`: explicit ids or a
listing, and what a full listing no longer shows), `listing` (the fetcher thread, the page
work in order, the stored cursor), `pool` (the page workers and the WAL checkpointer),
`pages` (what a worker does with one page), `prepared` (a page's models mapped to rows and
inserted) and `bulkload` (indexes set aside during a first sync into an empty catalog).
"""

from catalog.errors import SyncCancelled
from catalog.sync.pool import MAX_SYNC_WORKERS, POOL_MIN_MODELS, sync_pool, sync_workers
from catalog.sync.request import SyncProgress, SyncProgressCallback, SyncRequest, SyncSummary
from catalog.sync.run import run_sync

__all__ = [
    "MAX_SYNC_WORKERS",
    "POOL_MIN_MODELS",
    "SyncCancelled",
    "SyncProgress",
    "SyncProgressCallback",
    "SyncRequest",
    "SyncSummary",
    "run_sync",
    "sync_pool",
    "sync_workers",
]
