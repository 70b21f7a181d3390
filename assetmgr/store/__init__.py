"""The verified asset store: file hashing, safety checks of untrusted files, and storage."""

from assetmgr.store.hashing import (
    FileChangedError,
    FileHashes,
    HashCache,
    Hasher,
    HashingCancelled,
    cached_hashes,
    compute_hashes,
)
from assetmgr.store.safetensors_check import (
    InvalidSafetensorsError,
    PickleRefusedError,
    SafetensorsInfo,
    TensorInfo,
    UnsafeFileError,
    check_pickle_free,
    detect_format,
    validate_safetensors,
)

__all__ = [
    "FileChangedError",
    "FileHashes",
    "HashCache",
    "Hasher",
    "HashingCancelled",
    "InvalidSafetensorsError",
    "PickleRefusedError",
    "SafetensorsInfo",
    "TensorInfo",
    "UnsafeFileError",
    "cached_hashes",
    "check_pickle_free",
    "compute_hashes",
    "detect_format",
    "validate_safetensors",
]
