"""Generation commands: generate, rerun, runs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import typer

from assetmgr.cli import print_json, print_line
from assetmgr.config import Settings
from assetmgr.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("rerun")(rerun)
    app.command("runs")(runs)


def _generation() -> Any:
    from assetmgr.app.context import AppContext
    from assetmgr.app.generate import Generation

    return Generation(AppContext(Settings.load()))


def _progress_printer(enabled: bool) -> Any:
    if not enabled:
        return None

    from assetmgr.cli.progress import rewrite_status

    def on_progress(p: Any) -> None:
        if p.total:
            rewrite_status(f"{p.stage}: step {p.step}/{p.total}")

    return on_progress


def _image_data(from_png: Path | None, from_params: str | None) -> Any:
    """The generation data of `--from-png FILE` or `--from-params FILE|-`."""
    from assetmgr.app import genparams

    if from_png is not None:
        return genparams.from_png(from_png)
    if from_params == "-":
        raw = sys.stdin.buffer.read(genparams.MAX_TEXT_CHUNK_BYTES + 1)
        text = genparams.parameters_text(raw, "stdin")
        return genparams.from_parameters(text, "stdin")
    path = Path(str(from_params))
    return genparams.from_parameters(genparams.read_parameters_file(path), path.name)


def _from_image(generation: Any, data: Any, base: Any, overrides: dict[str, Any]) -> Any:
    """The request an image's data makes, with the flags given on top; says on stderr what
    was dropped and which local files stand for the image's models."""
    from assetmgr.app.reuse import checked_request, reuse_generation

    for note in data.notes:
        print_line(f"note: {note}", err=True)
    reuse = reuse_generation(generation.ctx, data, base)
    request = checked_request(reuse, overrides)
    found = [reuse.checkpoint] if reuse.checkpoint and "model" not in overrides else []
    for item in [*found, *reuse.loras]:
        what = "checkpoint" if item.ref.kind == "checkpoint" else f"LoRA <{item.tag}>"
        print_line(
            f"{what}: {item.alias} (version {item.version_id}, by {item.matched_by})", err=True
        )
    return request


def generate(
    model: str | None = typer.Option(
        None, "--model", help="Checkpoint: version id or catalog name (required without an image)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="A1111 prompt; <lora:NAME:W> tags work (or an image or a file)."
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="One prompt a line (# comments); each line is a job."
    ),
    loras: list[str] = typer.Option([], "--lora", help="REF:WEIGHT (repeatable)."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps [default: 20]."),
    cfg: float | None = typer.Option(None, "--cfg", help="CFG scale [default: 7]."),
    seed: str | None = typer.Option(
        None, "--seed", help="Seed of the first image (+1 per image), or a range 5-9 [default: 0]."
    ),
    count: int | None = typer.Option(
        None, "--count", help="Images with seeds seed, seed+1, ... in one container."
    ),
    width: int | None = typer.Option(
        None, "--width", help="Pixels, a multiple of 8 [default: 512]."
    ),
    height: int | None = typer.Option(
        None, "--height", help="Pixels, a multiple of 8 [default: 512]."
    ),
    batch: int = typer.Option(1, "--batch", help="Images in one run."),
    sampler: str | None = typer.Option(
        None, "--sampler", help="A1111 sampler name [default: Euler a]."
    ),
    schedule_type: str | None = typer.Option(
        None, "--schedule-type", help="Automatic, Karras, Exponential or SGM Uniform."
    ),
    clip_skip: int | None = typer.Option(
        None, "--clip-skip", help="A1111 numbering: 1 = last layer [default: 1]."
    ),
    hires_scale: float | None = typer.Option(
        None, "--hires-scale", help="Hires fix: upscale by this (more than 1, at most 4)."
    ),
    hires_steps: int | None = typer.Option(
        None, "--hires-steps", help="Hires fix steps; 0: as many as the first pass [default: 0]."
    ),
    hires_denoise: float | None = typer.Option(
        None, "--hires-denoise", help="Hires fix denoising strength [default: 0.5]."
    ),
    from_png: Path | None = typer.Option(
        None, "--from-png", help="Repeat the run in this PNG's parameters; flags given win."
    ),
    from_params: str | None = typer.Option(
        None, "--from-params", help="The same from an A1111 parameters block in FILE (- : stdin)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the request and print its job spec as JSON; run nothing."
    ),
    plugins: list[str] = typer.Option([], "--plugin", help="Added plugin to run (repeatable)."),
    triggers: bool = typer.Option(False, "--add-trigger-words", help="Prepend LoRA triggers."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Run LoRAs made for another base model (a warning)."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 (CPU) or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: int = typer.Option(2, "--threads", help="Torch threads (part of the spec)."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds before the job is killed."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Generate images in the sandbox from catalog models; every job is recorded as a run.

    The whole request is checked before any container starts: the ranges of the numbers,
    the sampler, the LoRA tags and weights, and that each file is of the right type and base
    model. With --from-png or --from-params the image's settings and models (found in the
    store by their hashes) fill the request; a model that is not local stops it with the
    `assetmgr pull` command that fetches it. With --count, a seed range or a prompt file,
    every job is checked first and then all run in one container (one per job when a plugin
    is not trusted).
    """
    from assetmgr.app.batch import expand_batch, parse_seeds, read_prompt_file
    from assetmgr.app.generate import GenerateRequest
    from assetmgr.app.generate_checks import parse_lora_option, validate_request

    if prompt is not None and prompt_file is not None:
        raise UsageError(
            "--prompt and --prompt-file cannot go together",
            hint="--prompt runs one prompt; --prompt-file runs each line of a file.",
        )
    seeds = parse_seeds(seed) if seed is not None else None
    lines = read_prompt_file(prompt_file) if prompt_file is not None else None
    given = {
        "model": model,
        "prompt": prompt,
        "negative": negative,
        "steps": steps,
        "cfg": cfg,
        "seed": seeds.first if seeds is not None else None,
        "width": width,
        "height": height,
        "sampler": sampler,
        "schedule_type": schedule_type,
        "clip_skip": clip_skip,
        "hires_scale": hires_scale,
        "hires_steps": hires_steps,
        "hires_denoise": hires_denoise,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if sampler is not None and schedule_type is None:
        overrides["schedule_type"] = None  # the sampler given replaces the image's schedule too
    base = GenerateRequest(
        model="",
        prompt="",
        loras=[parse_lora_option(x) for x in loras],
        batch=batch,
        plugins=list(plugins),
        add_trigger_words=triggers,
        dtype=dtype,
        device=device,
        threads=threads,
        timeout_s=timeout,
        allow_mismatch=allow_mismatch,
    )
    if from_png is not None and from_params is not None:
        raise UsageError(
            "--from-png and --from-params cannot go together",
            hint="Give the generation data once: a PNG, or a parameters block.",
        )
    if base.loras:
        overrides["loras"] = base.loras
    generation = None
    if from_png is not None or from_params is not None:
        data = _image_data(from_png, from_params)
        generation = _generation()
        req = _from_image(generation, data, base, overrides)
    else:
        if model is None:
            raise UsageError(
                "missing option '--model' (or give --from-png FILE or --from-params FILE)",
                hint="Run `assetmgr generate --help` for usage.",
            )
        if prompt is None and lines is None:
            raise UsageError(
                "give --prompt or --prompt-file",
                hint="--prompt runs one prompt; --prompt-file runs each line of a file.",
            )
        req = dataclasses.replace(base, **overrides)
    if count is not None or lines is not None or (seeds is not None and seeds.is_range):
        if dry_run:
            raise UsageError(
                "--dry-run checks one job", hint="Leave out --count, --prompt-file and seed ranges."
            )
        jobs = expand_batch(req, seeds or parse_seeds(str(req.seed)), count=count, prompts=lines)
        _generate_batch(jobs, out, as_json)
        return
    validate_request(req)  # before the catalog is even opened (when no image was read)
    generation = generation or _generation()
    _generate_one(generation, req, out, as_json, dry_run)


def _generate_one(
    generation: Any, req: Any, out: Path | None, as_json: bool, dry_run: bool
) -> None:
    from assetmgr.app.generate import new_run_dir

    plan = generation.plan(req)
    for warning in plan.warnings:
        print_line(f"warning: {warning.message}", err=True)
    if dry_run:
        print_json(plan.spec)
        return
    record = generation.generate(
        req,
        plan=plan,
        out_dir=out or new_run_dir(),
        progress=_progress_printer(not as_json and sys.stderr.isatty()),
    )
    if as_json:
        print_json(record.as_json())
        return
    print_line(f"\nrun {record.run_id} done", err=True, multiline=True)
    for o in record.outputs:
        print_line(str(o["path"]))


def _generate_batch(jobs: list[Any], out: Path | None, as_json: bool) -> None:
    """Every job checked, then all run in one warm worker; a line per finished image."""
    from assetmgr.app.batch import validate_batch
    from assetmgr.app.generate import new_run_dir

    validate_batch(jobs)  # before the catalog is even opened
    generation = _generation()
    planned = generation.plan_batch(jobs)
    for warning in {w.message: w for job in planned for w in job.plan.warnings}:
        print_line(f"warning: {warning}", err=True)
    from assetmgr.cli.progress import rewrite_status

    total = len(planned)
    status = sys.stderr.isatty()
    pending = [False]  # a status line waits for its newline
    finished: list[Any] = []

    def mode(how: str) -> None:
        if how == "per-job" and total > 1:
            names = ", ".join(planned[0].request.plugins)
            print_line(
                f"note: the plugins {names} are not all trusted: each image runs in its own "
                "container",
                err=True,
            )

    def progress(p: Any) -> None:
        if status and p.steps:
            rewrite_status(f"[{p.index + 1}/{p.total}] seed {p.seed}: step {p.step}/{p.steps}")
            pending[0] = True

    def done(job: Any, record: Any) -> None:
        finished.append(record)
        seeds = ", ".join(str(o.get("seed")) for o in record.outputs)
        newline = "\n" if pending[0] else ""
        pending[0] = False
        print_line(
            f"{newline}[{job.index + 1}/{total}] run {record.run_id} done (seed {seeds})",
            err=True,
            multiline=True,
        )
        if not as_json:
            for o in record.outputs:
                print_line(str(o["path"]))

    try:
        records = generation.generate_batch(
            planned,
            out_dir=lambda job: out / f"job-{job.index + 1:04d}" if out else new_run_dir(),
            progress=progress,
            done=done,
            mode=mode,
        )
    except BaseException:
        newline = "\n" if pending[0] else ""
        print_line(
            f"{newline}stopped after {len(finished)} of {total} jobs; the rest never started "
            "(`assetmgr runs` lists the recorded runs)",
            err=True,
            multiline=True,
        )
        raise
    if as_json:
        print_json([r.as_json() for r in records])


def rerun(
    run_id: int = typer.Argument(..., help="A run id from `assetmgr runs`."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Repeat a recorded run and report whether the output bytes match."""
    from assetmgr import paths

    record = _generation().rerun(run_id, out_dir=out or paths.runs_dir() / f"rerun-{run_id}")
    if as_json:
        print_json(record.as_json())
    else:
        verdict = "identical bytes" if record.identical else "DIFFERENT bytes"
        print_line(f"run {record.run_id} repeats run {run_id}: {verdict}")
    if not record.identical:
        raise SystemExit(5)


def runs(
    limit: int = typer.Option(20, "--limit", min=0, help="At most this many runs (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Recorded generation runs, newest first (a cut list says so on stderr)."""
    listed = _generation().runs(limit)
    data = [r.listing() for r in listed.runs]
    total = listed.total
    if as_json:
        print_json(data)
    else:
        for r in data:
            print_line(
                f"#{r['run_id']} {r['created_at']} {r['status']} seed={r['seed']} "
                f"{(r['prompt'] or '')[:60]!r}"
            )
    if not data:
        print_line(
            "no generation runs yet; `assetmgr generate --model M --prompt P` records one",
            err=True,
        )
    elif total > len(data):
        print_line(
            f"{len(data)} of {total} runs shown; pass --limit N for more, or --limit 0",
            err=True,
        )
