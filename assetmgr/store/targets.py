"""What a download is, the rules that refuse or bound it, and the errors a download raises.

A `FileTarget` comes from the catalog (`assetmgr.store.records`); `check_policy` refuses what
must never enter the store; `FileTarget.catalog_bound` is the first of a transfer's bounds (the
downloader narrows it with what storage declares and the maximum download size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from assetmgr.errors import StoreError

APPROX_SIZE_MARGIN_BYTES = 64 << 10
"""Slack on an approximate catalog size (a fractional sizeKB); the hash decides the rest."""
# Which rule bounds a transfer (`DownloadTooLargeError.limit_source`).
LIMIT_EXACT = "the catalog's size"
LIMIT_APPROX = "the catalog's approximate size plus a margin"
LIMIT_DECLARED = "the length the storage declared"
LIMIT_MAXIMUM = "the maximum download size"


class HashMismatchError(StoreError):
    """Downloaded bytes differ from what Civitai published; they were quarantined."""

    title = "Hash mismatch"
    hint = (
        "The bytes were quarantined and are not loadable. Retry the pull; if it keeps failing "
        "the file on the server may have changed (sync the model again) or been tampered with."
    )


class IncompleteDownloadError(StoreError):
    """The transfer could not be completed after all resume attempts."""

    title = "Download incomplete"
    hint = "Run the same `assetmgr pull` again: it resumes from the bytes already on disk."


class DownloadTooLargeError(StoreError):
    """A transfer went past its bound, or declared it would; stopped, its partial deleted.

    `limit` and `limit_source` say which bound; `received` is where the bytes were stopped,
    `declared` the size a server announced when that alone was too much.
    """

    title = "Download too large"
    hint = (
        "The server sent more than it declared, so the bytes were dropped. Sync the model again "
        "(`assetmgr sync --model-id N`) and retry; if it persists the file or server is bad."
    )

    def __init__(
        self,
        *,
        name: str,
        limit: int,
        limit_source: str,
        received: int | None = None,
        declared: int | None = None,
    ) -> None:
        self.name = name
        self.limit = limit
        self.limit_source = limit_source
        self.received = received
        self.declared = declared
        bound = f"the {describe_bytes(limit)} bound ({limit_source})"
        if declared is not None:
            shown = describe_bytes(declared)
            message = f"{name}: declared as {shown}, over {bound}; not downloaded"
        else:
            message = (
                f"{name}: stopped at {describe_bytes(received or 0)}, past {bound}; "
                "the partial file was deleted"
            )
        hint = None
        if limit_source == LIMIT_MAXIMUM:
            hint = (
                "If the file really is that large, raise max_download_size in the config file or "
                "ASSETMGR_MAX_DOWNLOAD_SIZE (`assetmgr config show` prints the value in use)."
            )
        super().__init__(message, hint=hint)


def describe_bytes(n: int) -> str:
    """``123456789 bytes (118 MiB)``: exact for comparing, rounded for reading."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n} bytes ({n / size:.3g} {unit})"
    return f"{n} bytes"


@dataclass(frozen=True)
class TransferBound:
    """How many bytes a transfer may bring, and which rule said so."""

    limit: int
    source: str


class PolicyRefusedError(StoreError):
    """The safety policy refuses this file."""

    title = "Refused by the safety policy"


class DownloadCancelled(StoreError):
    title = "Download cancelled"
    hint = "Run the same `assetmgr pull` again to resume."
    exit_code = 130


@dataclass(frozen=True)
class FileTarget:
    """What to download, from the catalog: ids, names and the expected digest and size."""

    version_id: int
    file_id: int
    name: str
    expected_sha256: str
    expected_size: int | None
    """The exact size in bytes, when the catalog knows it."""
    format: str | None = None
    model_type: str | None = None
    base_model: str | None = None
    model_name: str | None = None
    version_name: str | None = None
    pickle_scan_result: str | None = None
    virus_scan_result: str | None = None
    download_params: dict[str, str] = field(default_factory=dict)
    approx_size: int | None = None
    """An approximate size (a fractional sizeKB, rounded up) when the exact one is unknown."""

    @property
    def partial_key(self) -> str:
        """The key of its partial file and lock in the store (one per catalog file)."""
        return f"file-{self.file_id}"

    def catalog_bound(self, max_bytes: int) -> TransferBound:
        """The bound the catalog sets (the maximum when it knows no size)."""
        if self.expected_size is not None:
            return TransferBound(self.expected_size, LIMIT_EXACT)
        if self.approx_size is not None:
            return TransferBound(self.approx_size + APPROX_SIZE_MARGIN_BYTES, LIMIT_APPROX)
        return TransferBound(max_bytes, LIMIT_MAXIMUM)


def is_pickle_format(name: str, fmt: str | None) -> bool:
    lowered = name.lower()
    if fmt and fmt.lower() in {"pickletensor", "pickle"}:
        return True
    return lowered.endswith((".ckpt", ".pt", ".pth", ".bin", ".pkl"))


def check_policy(target: FileTarget, *, allow_pickle: bool) -> None:
    """Refuse what must never enter the store; raises `PolicyRefusedError`."""
    if "Danger" in (target.pickle_scan_result, target.virus_scan_result):
        raise PolicyRefusedError(
            f"Civitai's scanners flag {target.name} as dangerous "
            f"(pickle scan: {target.pickle_scan_result}, virus scan: {target.virus_scan_result})",
            hint="This file is refused in every mode; pick another file or version.",
        )
    if not target.expected_sha256:
        raise PolicyRefusedError(
            f"the catalog has no SHA256 for {target.name}, so it cannot be verified",
            hint="Sync the model again (`assetmgr sync --model-id N`); unverifiable files "
            "are refused.",
        )
    if is_pickle_format(target.name, target.format) and not allow_pickle:
        raise PolicyRefusedError(
            f"{target.name} is a pickle format ({target.format or 'by extension'}), "
            "which can run code",
            hint="Prefer the safetensors file of this version; `--allow-pickle` stores it "
            "(it is never unpickled on the host).",
        )


__all__ = [
    "APPROX_SIZE_MARGIN_BYTES",
    "LIMIT_APPROX",
    "LIMIT_DECLARED",
    "LIMIT_EXACT",
    "LIMIT_MAXIMUM",
    "DownloadCancelled",
    "DownloadTooLargeError",
    "FileTarget",
    "HashMismatchError",
    "IncompleteDownloadError",
    "PolicyRefusedError",
    "TransferBound",
    "check_policy",
    "describe_bytes",
    "is_pickle_format",
]
