"""Catalog commands: sync, models list/show, lookup, demo, db, config."""

from __future__ import annotations

import threading
from typing import Any

import typer

from assetmgr.cli import print_json, print_line, print_rich
from assetmgr.config import Settings, mask_secret, store_api_key
from assetmgr.display import clean
from assetmgr.errors import AssetMgrError

models_app = typer.Typer(help="Browse the local catalog.")
db_app = typer.Typer(help="The catalog database.")
config_app = typer.Typer(help="Settings and the Civitai API key.")


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
    app.command("lookup")(lookup)
    app.command("demo")(demo)
    app.add_typer(models_app, name="models")
    app.add_typer(db_app, name="db")
    app.add_typer(config_app, name="config")


def sync(
    api_base: str | None = typer.Option(
        None, "--api-base", help="API root (default: $CIVITAI_API_BASE or https://civitai.com)."
    ),
    types: list[str] = typer.Option(
        [], "--type", help="Model type, e.g. LORA, Checkpoint (repeatable)."
    ),
    base_models: list[str] = typer.Option(
        [], "--base-model", help="Base model, e.g. 'SDXL 1.0' (repeatable)."
    ),
    query: str | None = typer.Option(None, "--query", help="Full-text query on Civitai."),
    tag: str | None = typer.Option(None, "--tag", help="Only models with this tag."),
    username: str | None = typer.Option(None, "--username", help="Only models by this creator."),
    model_ids: list[int] = typer.Option(
        [], "--model-id", help="Sync exactly these models (repeatable)."
    ),
    max_models: int | None = typer.Option(None, "--max-models", min=1, help="Stop after N models."),
    nsfw: bool = typer.Option(
        False, "--nsfw", help="Include NSFW models (default: SFW only, as on Civitai)."
    ),
    page_size: int = typer.Option(100, "--page-size", min=1, max=100, help="Models per API page."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Fetch models, versions and files from Civitai into the local catalog."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.sync import SyncOptions, open_sync
    from assetmgr.cli.progress import sync_progress

    options = SyncOptions(
        types=tuple(types),
        base_models=tuple(base_models),
        query=query,
        tag=tag,
        username=username,
        nsfw=nsfw,
        page_size=page_size,
        model_ids=tuple(model_ids),
        max_models=max_models,
    )
    cancel = threading.Event()
    with AppContext(Settings.load(api_base=api_base)) as ctx:
        # The page workers start first, while this process has one thread (see open_sync).
        with open_sync(ctx, options) as job, sync_progress(not as_json) as on_progress:
            try:
                outcome = job.run(progress=on_progress, cancel=cancel)
            except KeyboardInterrupt:
                cancel.set()
                raise
    if outcome.summary is None:
        print_line(
            f"note: Civitai is unreachable ({outcome.unreachable}); seeded the local demo "
            f"catalog instead ({outcome.demo_counts['models']} models). Run `assetmgr sync` "
            "again when online.",
            err=True,
        )
        if as_json:
            print_json(outcome.as_json())
        return
    summary = outcome.summary
    if as_json:
        print_json(summary.as_json())
    else:
        print_line(
            f"synced {summary.models} models, {summary.versions} versions, {summary.files} files"
            f" ({summary.models_written} written, {summary.models_marked} marked"
            f"{', resumed' if summary.resumed else ''})",
            err=True,
        )
        for err in summary.errors[:20]:
            print_line(f"skipped item: {err}", err=True)


DEFAULT_LIST_LIMIT = 100


@models_app.command("list")
def models_list(
    types: list[str] = typer.Option([], "--type", help="Model type (repeatable)."),
    base_models: list[str] = typer.Option([], "--base-model", help="Base model (repeatable)."),
    search: str | None = typer.Option(
        None, "--search", help="Full-text search in the local catalog."
    ),
    local: bool = typer.Option(False, "--local", help="Only models with files in the local store."),
    limit: int = typer.Option(
        DEFAULT_LIST_LIMIT, "--limit", min=0, help="At most this many models (0: all)."
    ),
    show_all: bool = typer.Option(False, "--all", help="Every matching model (as --limit 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array on stdout."),
) -> None:
    """List models in the local catalog (a cut list says so on stderr)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import list_models

    with AppContext(Settings.load()) as ctx:
        found = list_models(
            ctx,
            types=types,
            base_models=base_models,
            search=search,
            local_only=local,
            limit=None if show_all or limit == 0 else limit,
        )
    objects, total, cut = found.objects, found.total, found.cut
    if as_json:
        print_json(objects)
    elif objects:
        _print_models_table(objects)
    if cut:
        print_line(
            f"{len(objects)} of {total} models shown; pass --limit N for more, or --all",
            err=True,
        )
    elif found.catalog_empty:
        print_line("the catalog is empty; run `assetmgr sync` or `assetmgr demo` first", err=True)
    elif not objects:
        print_line(_no_match(local), err=True)


def _no_match(local: bool) -> str:
    if local:
        return (
            "no local models match; `assetmgr pull VERSION_ID` or `assetmgr import DIR` adds "
            "files to the store"
        )
    return "no models match these filters"


def _cell(value: object) -> Any:
    """A table cell of outside text: cleaned, and a `Text`, so Rich reads no markup in it."""
    from rich.text import Text

    return Text(clean("" if value is None else str(value)))


def _print_models_table(objects: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("id", "type", "base model", "name", "creator", "versions", "local"):
        table.add_column(col)
    for obj in objects:
        versions = obj.get("versions") or []
        base = versions[0]["base_model"] if versions else ""
        local = any(
            (f.get("local") or {}).get("state") == "verified"
            for v in versions
            for f in v.get("files", [])
        )
        table.add_row(
            _cell(obj["id"]),
            _cell(obj["type"]),
            _cell(base),
            _cell(obj["name"]),
            _cell(obj.get("creator")),
            _cell(len(versions)),
            _cell("yes" if local else ""),
        )
    print_rich(table)


@models_app.command("show")
def models_show(
    model_id: int = typer.Argument(..., metavar="MODEL_ID", help="Civitai model id."),
    as_json: bool = typer.Option(False, "--json", help="Print the model object on stdout."),
) -> None:
    """Show one model with its versions, files, hashes and trigger words."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import show_model

    settings = Settings.load()
    with AppContext(settings) as ctx:
        obj = show_model(ctx, model_id)
    if as_json:
        print_json(obj)
        return
    _print_model(obj, api_key_set=settings.api_key is not None)


def _print_model(obj: dict[str, Any], *, api_key_set: bool) -> None:
    from rich.text import Text

    from assetmgr.app.models import access_words

    lines: list[Text] = [
        Text.assemble(
            (clean(obj["name"]), "bold"),
            clean(
                f" (#{obj['id']}, {obj['type']}{', NSFW' if obj.get('nsfw') else ''})"
                f" by {obj.get('creator') or '?'}"
            ),
        )
    ]
    if obj.get("tags"):
        lines.append(Text(clean("tags: " + ", ".join(obj["tags"]))))
    for v in obj.get("versions", []):
        lines.append(
            Text.assemble(
                "  ",
                (clean(v["name"]), "bold"),
                clean(f" #{v['id']} {v.get('base_model') or ''} {v.get('published_at') or ''}"),
            )
        )
        for rule in v.get("access") or []:
            shown = access_words(rule["code"], rule["until"])
            lines.append(Text(f"    download: {shown}", style="yellow"))
        for word in v.get("trained_words") or []:
            lines.append(Text(clean(f"    trigger: {word}")))
        images = v.get("images") or []
        if images:
            cached = sum(1 for i in images if i["local_path"])
            held = sum(1 for i in images if i["above_threshold"])
            lines.append(
                Text(
                    f"    images: {len(images)} ({cached} cached"
                    + (f", {held} above the NSFW threshold" if held else "")
                    + ")"
                )
            )
        for f in v.get("files", []):
            hashes = f.get("hashes") or {}
            local = f.get("local")
            lines.append(
                Text(
                    clean(
                        f"    file #{f['id']} {f['name']} {f.get('size_kb') or 0:.0f} KB"
                        f" {f.get('format') or ''}{' primary' if f.get('primary') else ''}"
                        f" SHA256 {hashes.get('SHA256', '?')}"
                        + (f" [{local['state']}] {local.get('path') or ''}" if local else "")
                    )
                )
            )
    if not api_key_set:
        lines.append(
            Text(
                "note: no API key is set, and Civitai asks for a login to download many files "
                "(`assetmgr config set-key`)",
                style="dim",
            )
        )
    print_rich(Text("\n").join(lines))


def lookup(
    digest: str = typer.Argument(
        ..., metavar="HASH", help="SHA256, AutoV1/V2/V3, BLAKE3 or CRC32, any case."
    ),
    api_base: str | None = typer.Option(None, "--api-base", help="API root for the remote lookup."),
    offline: bool = typer.Option(False, "--offline", help="Only look in the local catalog."),
    as_json: bool = typer.Option(False, "--json", help="Print matches as JSON on stdout."),
) -> None:
    """Find the model file with this hash: the local catalog first, then Civitai."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import lookup_hash

    with AppContext(Settings.load(api_base=api_base)) as ctx:
        matches = lookup_hash(ctx, digest, offline=offline)
    if as_json:
        print_json(matches)
        return
    for m in matches:
        print_line(
            f"{m['hash_type']} match ({m['source']}): model #{m['model_id']} {m['model_name']!s}"
            f" / version #{m['version_id']} {m['version_name']!s}"
            f" / file #{m['file_id']} {m['file_name']!s}"
        )


def demo(
    as_json: bool = typer.Option(False, "--json", help="Print counts as JSON."),
) -> None:
    """Seed a small local demo catalog (works offline)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import seed_demo

    with AppContext(Settings.load()) as ctx:
        counts = seed_demo(ctx)
    if as_json:
        print_json(counts)
    else:
        print_line(
            f"demo catalog ready: {counts['models']} models, {counts['versions']} versions, "
            f"{counts['files']} files",
            err=True,
        )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the catalog schema up to date (runs automatically on every command too)."""
    from assetmgr.context import open_engine

    settings = Settings.load()
    open_engine(settings)
    print_line(f"catalog at {settings.database_url_shown} is up to date", err=True)


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the settings in use (the API key masked)."""
    settings = Settings.load()
    data = {
        "home": str(settings.home),
        "database_url": settings.database_url_shown,
        "api_base": settings.api_base,
        "api_key": mask_secret(settings.api_key),
        "api_key_source": settings.api_key_source,
        "download_concurrency": settings.download_concurrency,
        "sync_concurrency": settings.sync_concurrency,
        "max_download_bytes": settings.max_download_bytes,
        "preview_cache_bytes": settings.preview_cache_bytes,
        "nsfw_threshold": settings.nsfw_threshold,
        "warm_worker_idle_s": settings.warm_worker_idle_s,
    }
    if as_json:
        print_json(data)
    else:
        for k, v in data.items():
            print_line(f"{k}: {v}")


@config_app.command("set-key")
def config_set_key(
    key: str | None = typer.Option(
        None, "--key", help="The key (prompted for when omitted).", hidden=True
    ),
) -> None:
    """Store the Civitai API key in the OS keyring (else the 0600 config file)."""
    if key is None:
        key = typer.prompt("Civitai API key", hide_input=True)
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise AssetMgrError(
            "that does not look like an API key",
            hint="Copy it from civitai.com → Account settings → API keys.",
        )
    where = store_api_key(key)
    print_line(f"API key {mask_secret(key)} saved in the {where}", err=True)
