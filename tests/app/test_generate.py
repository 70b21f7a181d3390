"""Generate, rerun and runs through the application layer, down to a fake job runner."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from assetmgr.app.context import AppContext
from assetmgr.app.generate import GenerateRequest, Generation, NoCheckpointError
from assetmgr.store.blobs import BlobStore
from sandbox.errors import JobCancelledError
from tests.app.conftest import import_models
from tests.app.fakes import FakeJobRunner


def _request(prompt: str = "a heron <lora:inkwash:0.5>", **kw: Any) -> GenerateRequest:
    fields: dict[str, Any] = {"model": "base15", "steps": 2, "width": 64, "height": 64, "seed": 7}
    return GenerateRequest(prompt=prompt, **{**fields, **kw})


def _file_sha(store: BlobStore, engine: Engine, name: str) -> str:
    from sqlmodel import Session, select

    from catalog.models import LocalFile, ModelFile

    with Session(engine) as session:
        row = session.exec(
            select(LocalFile).join(ModelFile).where(ModelFile.name == name)  # type: ignore[arg-type]
        ).one()
        return str(row.sha256).lower()


def name_as_on_civitai(engine: Engine, name: str, catalog_name: str) -> None:
    """Give an imported file the name a Civitai file has (the importer cleans ':' away)."""
    from sqlmodel import Session, select

    from catalog.models import ModelFile

    with Session(engine) as session, session.begin():
        file = session.exec(select(ModelFile).where(ModelFile.name == name)).one()
        file.name = catalog_name


def _local_loras(engine: Engine) -> list[Any]:
    from sqlmodel import Session

    from assetmgr.app.queries import LORA_TYPES, local_models

    with Session(engine) as session:
        return local_models(session, LORA_TYPES)


def test_generate_runs_the_checked_spec_and_records_it(
    ctx: AppContext, runner: FakeJobRunner, tmp_path: Path
) -> None:
    generation = Generation(ctx)
    seen: list[int | None] = []
    record = generation.generate(
        _request(), out_dir=tmp_path / "out", progress=lambda p: seen.append(p.step)
    )
    [job] = runner.jobs
    assert job.kind == "generate"
    assert job.params["prompt"] == "a heron <lora:inkwash:0.5>"
    [lora] = job.params["loras"]
    assert lora["name"] == "inkwash"
    assert lora["sha256"] == _file_sha(ctx.store, ctx.engine, "inkwash.safetensors")
    assert sorted(job.model_files) == sorted(m.name for m in job.models)
    assert seen == [0, 1, 2]
    assert record.status == "ok" and len(record.images) == 1 and record.images[0].is_file()
    listed = generation.runs(limit=5)
    assert [r.run_id for r in listed.runs] == [record.run_id] and listed.total == 1
    assert listed.runs[0].listing()["outputs"] == [record.outputs[0]["sha256"]]


def test_rerun_repeats_the_spec_and_compares_bytes(
    ctx: AppContext, runner: FakeJobRunner, tmp_path: Path
) -> None:
    generation = Generation(ctx)
    first = generation.generate(_request(), out_dir=tmp_path / "a")
    again = generation.rerun(first.run_id, out_dir=tmp_path / "b")
    assert runner.jobs[1].params == runner.jobs[0].params
    assert again.identical_to == first.run_id and again.identical is True
    assert [r.rerun_of for r in generation.runs().runs] == [first.run_id, None]


def _cancel_while_running(runner: FakeJobRunner, cancel: threading.Event) -> threading.Thread:
    def cancel_when_running() -> None:
        assert runner.waiting_at_gate.wait(30)
        cancel.set()

    thread = threading.Thread(target=cancel_when_running)
    thread.start()
    return thread


def test_a_generation_is_cancelled_and_recorded_as_failed(
    ctx: AppContext, runner: FakeJobRunner, tmp_path: Path
) -> None:
    runner.gate = threading.Event()
    cancel = threading.Event()
    thread = _cancel_while_running(runner, cancel)
    with pytest.raises(JobCancelledError):
        Generation(ctx).generate(_request(), out_dir=tmp_path / "out", cancel=cancel)
    thread.join()
    [run] = Generation(ctx).runs().runs
    assert run.status == "failed" and "cancelled" in str(run.error)


def test_a_rerun_can_be_cancelled(ctx: AppContext, runner: FakeJobRunner, tmp_path: Path) -> None:
    """The TUI's rerun had no cancel (issue 14): the Event must reach the job runner."""
    generation = Generation(ctx)
    first = generation.generate(_request(), out_dir=tmp_path / "a")
    runner.gate = threading.Event()
    cancel = threading.Event()
    thread = _cancel_while_running(runner, cancel)
    with pytest.raises(JobCancelledError):
        generation.rerun(first.run_id, out_dir=tmp_path / "b", cancel=cancel)
    thread.join()
    newest = generation.runs().runs[0]
    assert newest.status == "failed" and newest.rerun_of == first.run_id


def test_a_pinned_tag_runs_the_picked_version(
    ctx: AppContext, engine: Engine, runner: FakeJobRunner, tmp_path: Path
) -> None:
    """Two LoRAs share a file name; the version picked on the Generate screen is the one that
    reaches the job, not the first one found by name."""
    from sqlmodel import Session, select

    from catalog.models import LocalFile, ModelFile
    from tests.integration.test_import_export import sd15_lora

    import_models(engine, tmp_path / "second", {"inkwash.safetensors": sd15_lora(fill=9)})
    with Session(engine) as session:
        rows = session.exec(
            select(ModelFile.version_id, LocalFile.sha256)  # type: ignore[call-overload]
            .join(LocalFile, LocalFile.file_id == ModelFile.id)
            .where(ModelFile.name == "inkwash.safetensors")
            .order_by(ModelFile.id)
        ).all()
    assert len(rows) == 2
    for version_id, sha in rows:
        Generation(ctx).generate(
            _request(tag_versions={"inkwash": version_id}), out_dir=tmp_path / str(version_id)
        )
        assert runner.jobs[-1].params["loras"][0]["sha256"] == str(sha).lower()


def test_the_completed_alias_of_a_name_with_a_colon_resolves(
    ctx: AppContext, engine: Engine, runner: FakeJobRunner, tmp_path: Path
) -> None:
    """Completion turns `Detail:Tweaker v1.safetensors` into a tag; generation resolves it."""
    from sqlmodel import Session

    from assetmgr.app.queries import complete
    from tests.integration.test_import_export import sd15_lora

    import_models(engine, tmp_path / "odd", {"detail.safetensors": sd15_lora(fill=4)})
    name_as_on_civitai(engine, "detail.safetensors", "Detail:Tweaker v1.safetensors")
    with Session(engine) as session:
        [item] = complete(session, "<lora:Detail")
    assert item.text == "<lora:Detail_Tweaker v1:1>"
    Generation(ctx).generate(_request(f"a heron, {item.text}"), out_dir=tmp_path / "out")
    [lora] = runner.jobs[-1].params["loras"]
    assert lora["name"] == "Detail_Tweaker v1"
    [detail] = [lm for lm in _local_loras(engine) if lm.file_name.startswith("Detail:")]
    assert lora["sha256"] == detail.sha256.lower()


def test_no_checkpoint_is_a_problem_of_the_check(ctx: AppContext) -> None:
    check = Generation(ctx).check(_request(model=""))
    assert [type(p) for p in check.problems] == [NoCheckpointError]
    with pytest.raises(NoCheckpointError):
        Generation(ctx).plan(GenerateRequest(model="", prompt="x"))


def test_the_context_closes_the_runner_it_built_only(
    ctx: AppContext, runner: FakeJobRunner
) -> None:
    ctx.close()
    assert not runner.closed  # handed in: the caller owns it
