"""Catalog reads shaped for the TUI: pages of light rows, facets, one model's detail, the
local models and prompt completions. Headless: the TUI's thread workers call these with their
own session, and the tests call them directly."""

from assetmgr.app.queries.browse import (
    SORT_KEYS,
    BrowseQuery,
    Facets,
    ModelRow,
    SortKey,
    count_models,
    fetch_page,
    find_update_pairs,
    load_facets,
    update_model_ids,
)
from assetmgr.app.queries.detail import (
    DOWNLOADS_DISABLED,
    EARLY_ACCESS,
    FileDetail,
    HashCheck,
    ModelDetail,
    PreviewImage,
    VersionDetail,
    Weight,
    describe_access,
    load_detail,
    preview_path,
    suggest_weight,
)
from assetmgr.app.queries.local import (
    Completion,
    LocalModel,
    complete,
    local_models,
    prompt_lora_tags,
)
from assetmgr.app.queries.tables import CHECKPOINT_TYPES, LORA_TYPES

__all__ = [
    "CHECKPOINT_TYPES",
    "DOWNLOADS_DISABLED",
    "EARLY_ACCESS",
    "LORA_TYPES",
    "SORT_KEYS",
    "BrowseQuery",
    "Completion",
    "Facets",
    "FileDetail",
    "HashCheck",
    "LocalModel",
    "ModelDetail",
    "ModelRow",
    "PreviewImage",
    "SortKey",
    "VersionDetail",
    "Weight",
    "complete",
    "count_models",
    "describe_access",
    "fetch_page",
    "find_update_pairs",
    "load_detail",
    "load_facets",
    "update_model_ids",
    "local_models",
    "preview_path",
    "prompt_lora_tags",
    "suggest_weight",
]
