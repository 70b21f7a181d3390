"""Civitai API access: payload types, the synchronous client, its retry policy and errors."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catalog.civitai.client import (
        CivitaiClient,
        DownloadTicket,
        ModelFilters,
        normalize_hash,
    )
    from catalog.civitai.disposition import filename_from_disposition
    from catalog.civitai.errors import (
        ArchivedError,
        CivitaiBadRequestError,
        CivitaiConnectionError,
        CivitaiError,
        CivitaiInputError,
        CivitaiResponseValidationError,
        CivitaiStatusError,
        CrossOriginRedirectError,
        DownloadDisabledError,
        EarlyAccessError,
        ForbiddenError,
        LoginRequiredError,
        NotFoundError,
        RateLimitedError,
        ResponseTooLargeError,
        ServerError,
        UnauthorizedError,
        from_response,
    )
    from catalog.civitai.retry import RetryPolicy, parse_retry_after
    from catalog.civitai.types import (
        HashIdMatch,
        Model,
        ModelFile,
        ModelImage,
        ModelVersion,
        Page,
    )

# Submodules load on first use, so importing `catalog.civitai.errors` (as the app's error
# tree does at startup) does not pay for httpx, pydantic and the client.
_HOMES = {
    "CivitaiClient": "client",
    "DownloadTicket": "client",
    "ModelFilters": "client",
    "filename_from_disposition": "disposition",
    "normalize_hash": "client",
    "RetryPolicy": "retry",
    "parse_retry_after": "retry",
    "HashIdMatch": "types",
    "Model": "types",
    "ModelFile": "types",
    "ModelImage": "types",
    "ModelVersion": "types",
    "Page": "types",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name, "errors")
    module = importlib.import_module(f"catalog.civitai.{home}")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'catalog.civitai' has no attribute {name!r}") from None


__all__ = [
    "ArchivedError",
    "CivitaiBadRequestError",
    "CivitaiClient",
    "CivitaiConnectionError",
    "CivitaiError",
    "CivitaiInputError",
    "CivitaiResponseValidationError",
    "CivitaiStatusError",
    "CrossOriginRedirectError",
    "DownloadDisabledError",
    "DownloadTicket",
    "EarlyAccessError",
    "ForbiddenError",
    "HashIdMatch",
    "LoginRequiredError",
    "Model",
    "ModelFile",
    "ModelFilters",
    "ModelImage",
    "ModelVersion",
    "NotFoundError",
    "Page",
    "RateLimitedError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "UnauthorizedError",
    "filename_from_disposition",
    "from_response",
    "normalize_hash",
    "parse_retry_after",
]
