"""One alias rule for naming a LoRA in a prompt tag (`sandbox.protocol.jobspec.lora_tag_name`):
the TUI's completion writes it, the host resolves it back to the file, the worker matches it,
and ``<LoRA:...>``/``<lyco:...>`` tags count on the host as they do in the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from assetmgr import paths
from assetmgr.app.generation import GenerateRequest, build_spec
from assetmgr.app.queries import LocalModel
from assetmgr.store.blobs import BlobStore
from assetmgr.store.importer import import_folder
from sandbox.protocol.jobspec import GenSpec, lora_tag_matches, lora_tag_name, parse_tags
from sandbox.worker.generate import resolve_prompt
from tests.integration import conftest as integration
from tests.integration.test_export_attacks import sd15_checkpoint
from tests.integration.test_import_export import sd15_lora

FILE = "Detail:Tweaker v1.safetensors"
db_url = integration.db_url  # the catalog on SQLite and PostgreSQL
engine = integration.engine


def test_tag_kinds_match_in_any_case_and_lyco_is_a_lora_tag() -> None:
    (lora,) = parse_tags("a cat <LoRA:x:0.5>")
    assert (lora.kind, lora.name, lora.te, lora.is_lora) == ("lora", "x", 0.5, True)
    (lyco,) = parse_tags("a cat <lyco:ink wash:0.25:0.75>")
    assert (lyco.kind, lyco.name, lyco.te, lyco.unet_weight) == ("lyco", "ink wash", 0.25, 0.75)


@pytest.mark.parametrize(
    ("name", "alias"),
    [
        (FILE, "Detail_Tweaker v1"),
        ("Detail:Tweaker v1", "Detail_Tweaker v1"),
        ("a<b>c.SAFETENSORS", "a_b_c"),
        ("style v1.5.ckpt", "style v1.5"),
        ("  spaced.safetensors ", "spaced"),
        ("plain", "plain"),
    ],
)
def test_the_alias_replaces_what_would_break_the_tag(name: str, alias: str) -> None:
    assert lora_tag_name(name) == alias
    assert lora_tag_matches(alias.upper(), name)
    (tag,) = parse_tags(f"<lora:{lora_tag_name(name)}:0.5>")
    assert tag.name == alias and tag.te == 0.5


def test_the_completion_writes_the_alias() -> None:
    model = LocalModel(
        model_id=1,
        version_id=1,
        file_id=1,
        model_name="Detail Tweaker",
        version_name="v1",
        type="LORA",
        base_model="SD 1.5",
        file_name=FILE,
        sha256="ab" * 32,
        path=None,
    )
    assert model.lora_name == "Detail_Tweaker v1"


@pytest.fixture
def library(engine: Engine, tmp_path: Path) -> BlobStore:
    src = tmp_path / "models"
    src.mkdir()
    (src / "base15.safetensors").write_bytes(sd15_checkpoint())
    (src / FILE).write_bytes(sd15_lora(fill=5))
    (src / "Detail_Tweaker v2.safetensors").write_bytes(sd15_lora(fill=6))  # a near miss
    store = BlobStore(paths.store_dir())
    assert len(import_folder(engine, store, None, src).imported) == 3
    return store


@pytest.mark.parametrize("kind", ["lora", "LoRA", "lyco"])
def test_a_name_with_a_colon_round_trips_through_host_resolution_and_the_worker(
    engine: Engine, library: BlobStore, kind: str
) -> None:
    tag = f"<{kind}:{lora_tag_name(FILE)}:0.5>"
    with Session(engine) as session:
        plan = build_spec(session, library, GenerateRequest(model="base15", prompt=f"a {tag}"))
    (lora,) = plan.spec["loras"]
    assert lora["name"] == "Detail_Tweaker v1"
    mount = lora["path"].removeprefix("/models/")
    assert mount.startswith("Detail_Tweaker_v1-") and mount in plan.mounts
    assert plan.mounts[mount].read_bytes() == sd15_lora(fill=5)  # not the v2 near miss
    resolved = resolve_prompt(GenSpec.model_validate(plan.spec))
    assert [(u.name, u.te_weight) for u in resolved.loras] == [("Detail_Tweaker v1", 0.5)]


def test_an_untagged_lora_with_a_colon_is_named_by_its_alias(
    engine: Engine, library: BlobStore
) -> None:
    request = GenerateRequest(model="base15", prompt="a cat", loras=[("Detail:Tweaker v1", 0.7)])
    with Session(engine) as session:
        plan = build_spec(session, library, request)
    (lora,) = plan.spec["loras"]
    assert lora["name"] == "Detail_Tweaker v1"
    resolved = resolve_prompt(GenSpec.model_validate(plan.spec))
    assert resolved.infotext.endswith("<lora:Detail_Tweaker v1:0.7>")
    (tag,) = parse_tags(resolved.infotext)  # the PNG's prompt names it in a tag that parses
    assert tag.name == "Detail_Tweaker v1"
