"""Front-end words for the catalog layer's errors (see `assetmgr.wording`)."""

from __future__ import annotations

from assetmgr.wording import Wording, words_for
from catalog.civitai import errors as civitai
from catalog.errors import (
    BadHashError,
    CatalogError,
    DatabaseURLError,
    MigrationError,
    NotInCatalogError,
    SyncCancelled,
)

_SYNC_FIRST = "Run `assetmgr sync` (or `assetmgr sync --model-id N`) to fetch it first."
_PULL_OR_IMPORT = "`assetmgr pull VERSION_ID`) or import it (`assetmgr import DIR`)."
# What to do about a missing thing, by `NotInCatalogError.kind` ({key} is its id or hash).
_MISSING_HINTS = {
    "model": "Run `assetmgr sync --model-id {key}` to fetch it.",
    "hash": "Drop --offline to ask Civitai too.",
    "hash-anywhere": (
        "A private merge or never uploaded? `assetmgr import` adds it as a local model."
    ),
    "version-files": "The version may be archived; sync its model again to refresh it.",
    "local-file": "Pull it (" + _PULL_OR_IMPORT,
    "generation-input": "Pull it first (" + _PULL_OR_IMPORT,
    "version-file": "`assetmgr models show {key}` lists its files.",
    "pull-first": "Run `assetmgr pull {key}` first.",
    "pull-or-import": "Pull or import it first.",
    "run": "`assetmgr runs` lists recorded runs.",
    "run-input": "Pull or import that file again (version {key}).",
    "ref": "Pass a version id or a full 64-hex SHA256.",
    "stored-file": "Nothing to delete: the file is not in the store.",
}
_API_BASE = "`--api-base` or CIVITAI_API_BASE select another server."
_SET_KEY = "CIVITAI_API_KEY or `assetmgr config set-key`"


@words_for(CatalogError)
def _catalog(exc: CatalogError) -> Wording:
    return Wording(
        "Catalog error",
        exc.message,
        "Run `assetmgr db upgrade`; if the database is damaged, move it away and sync again.",
    )


@words_for(NotInCatalogError)
def _not_in_catalog(exc: NotInCatalogError) -> Wording:
    hint = _MISSING_HINTS.get(exc.kind, _SYNC_FIRST).format(key=exc.key)
    return Wording("Not in the catalog", exc.message, hint, exit_code=3)


@words_for(MigrationError)
def _migration(exc: MigrationError) -> Wording:
    return Wording(
        "Migration failed",
        exc.message,
        "Check that the database is reachable and writable and was not created by a newer "
        "assetmgr; if it is damaged, move it away and sync again.",
    )


@words_for(DatabaseURLError)
def _database_url(exc: DatabaseURLError) -> Wording:
    if exc.backend is None:
        hint = "Check ASSETMGR_HOME, ASSETMGR_DB_URL and the config file (assetmgr config show)."
    else:
        hint = "Use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB in ASSETMGR_DB_URL."
    return Wording("Configuration error", exc.message, hint, exit_code=2)


@words_for(BadHashError)
def _bad_hash(exc: BadHashError) -> Wording:
    return Wording(
        "Not a hash",
        exc.message,
        "Give 8 (AutoV1/CRC32), 10 (AutoV2), 12 (AutoV3) or 64 (SHA256/BLAKE3) hex digits.",
        exit_code=2,
    )


@words_for(SyncCancelled)
def _sync_cancelled(exc: SyncCancelled) -> Wording:
    return Wording(
        "Sync cancelled",
        exc.message,
        "Run the same `assetmgr sync` command again to resume from where it stopped.",
        exit_code=130,
    )


# -- Civitai -----------------------------------------------------------------------------------

# (title, hint) of the Civitai errors whose words depend on the class alone.
_CIVITAI_WORDS: dict[type[civitai.CivitaiError], tuple[str, str]] = {
    civitai.CivitaiError: ("Civitai error", "Try again later; " + _API_BASE),
    civitai.CivitaiConnectionError: (
        "Cannot reach Civitai",
        "Check the network connection; " + _API_BASE,
    ),
    civitai.CivitaiResponseValidationError: (
        "Unexpected answer from Civitai",
        "Civitai may have changed its API, or a proxy answered; try again later and report it.",
    ),
    civitai.ResponseTooLargeError: (
        "Answer too large",
        "No real Civitai answer is this large (a compression bomb or an endless stream); a proxy "
        "or a hostile server may be answering. Check `--api-base` / CIVITAI_API_BASE.",
    ),
    civitai.CrossOriginRedirectError: (
        "Redirect refused",
        "API calls follow redirects only within the API's own origin. If the API moved, "
        "point `--api-base` / CIVITAI_API_BASE at its new address.",
    ),
    civitai.CivitaiStatusError: ("Civitai error", "Try again later; " + _API_BASE),
    civitai.CivitaiBadRequestError: (
        "Bad request",
        "A parameter was rejected (for example limit above 100, or an unknown model type).",
    ),
    civitai.LoginRequiredError: ("Login required", f"This file needs an API key: set {_SET_KEY}."),
    civitai.UnauthorizedError: (
        "Unauthorized",
        f"Set a valid key with {_SET_KEY}; Civitai treats an unknown key as no key.",
    ),
    civitai.DownloadDisabledError: (
        "Download disabled",
        "The creator disabled downloads of this version; it can only be used on civitai.com.",
    ),
    civitai.ForbiddenError: (
        "Forbidden",
        "Check on civitai.com that this account has access to the file (bought or granted).",
    ),
    civitai.NotFoundError: (
        "Not found on Civitai",
        "Check the id or hash; the model may have been unpublished or deleted.",
    ),
    civitai.ArchivedError: (
        "Archived model",
        "The creator archived this model; its files are no longer available.",
    ),
    civitai.RateLimitedError: (
        "Rate limited",
        "Civitai is limiting requests from this client; wait a while and try again.",
    ),
    civitai.ServerError: (
        "Civitai server error",
        "Civitai is having trouble; try again in a few minutes.",
    ),
}


@words_for(*_CIVITAI_WORDS)
def _civitai(exc: civitai.CivitaiError) -> Wording:
    for klass in type(exc).__mro__:
        words = _CIVITAI_WORDS.get(klass)
        if words is not None:
            return Wording(words[0], exc.message, words[1])
    raise AssertionError("CivitaiError has words")  # pragma: no cover


@words_for(civitai.CivitaiInputError)
def _civitai_input(exc: civitai.CivitaiInputError) -> Wording:
    if exc.expected == "sha256":
        hint = "Only full SHA256 hashes can be looked up in bulk."
    elif exc.expected == "civitai-hash":
        hint = (
            "Use SHA256/BLAKE3 (64), AutoV3 (12, A1111 `Lora hashes`), "
            "AutoV2 (10, A1111 `Model hash`) or AutoV1/CRC32 (8)."
        )
    else:
        hint = "Check the value; `assetmgr --help` lists what each command accepts."
    return Wording("Invalid input", exc.message, hint)


@words_for(civitai.EarlyAccessError)
def _early_access(exc: civitai.EarlyAccessError) -> Wording:
    if exc.deadline is None:
        hint = "Buy early access on civitai.com, or wait until it ends."
    else:
        hint = f"Buy early access on civitai.com, or wait until {exc.deadline:%Y-%m-%d %H:%M UTC}."
    return Wording("Early access", exc.message, hint)
