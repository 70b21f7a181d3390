"""Several generations from one request: ``--count N``, seed ranges and prompt files.

`expand_batch` turns the request and the batch options into jobs (each prompt of the file,
each with every seed), `Generation.plan_batch` checks and resolves them all before anything
runs, and `Generation.generate_batch` runs them one after another in one warm worker (a
container per job for untrusted plugins), recording each as a run like a single generation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from assetmgr.app.generate_checks import InvalidRequestError, validate_request
from assetmgr.errors import AssetMgrError
from sandbox.protocol import jobspec

if TYPE_CHECKING:
    from assetmgr.app.generation import GenerateRequest, GenerationPlan, RunRecord

MAX_COUNT = 1000
"""The most images one ``--count`` or seed range asks for."""
MAX_PROMPTS = 1000
"""The most prompts one prompt file holds."""
MAX_JOBS = 1000
"""The most jobs one command runs (prompts times seeds)."""
MAX_PROMPT_FILE_BYTES = 1 << 20
MAX_WORKER_MOUNTS = 64
"""A batch's warm worker mounts every model file of the batch up to this many; past it, each
job's own (a job needing another file then starts a new worker)."""
MAX_SEED = int(jobspec.SEED.hi)
_SEED_RE = re.compile(r"\s*(\d+)\s*")
_RANGE_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_SEED_HINT = f"Give --seed N or a range FIRST-LAST, e.g. --seed 5-9 (seeds 0 to {MAX_SEED})."


class BatchRequestError(InvalidRequestError):
    """A batch option (``count``, ``seed``, ``prompt_file``) that cannot work; exit 2."""


class PromptLineError(AssetMgrError):
    """A prompt file line whose request fails a check; `cause` is that check's error."""

    exit_code = 2

    def __init__(self, path: Path, line: int, cause: Exception) -> None:
        self.path = path
        self.line = line
        self.cause = cause
        super().__init__(f"{path} line {line}: {cause}")


@dataclass(frozen=True)
class Seeds:
    """``--seed`` as given: one seed, or an inclusive range (`last`)."""

    first: int
    last: int | None = None

    @property
    def is_range(self) -> bool:
        return self.last is not None


@dataclass(frozen=True)
class PromptLine:
    path: Path
    line: int
    """1-based line number in the prompt file."""
    text: str


@dataclass(frozen=True)
class BatchJob:
    """One job of a batch: its request, and the prompt file line it came from (if any)."""

    index: int
    request: GenerateRequest
    source: PromptLine | None = None
    plan: GenerationPlan | None = None


@dataclass(frozen=True)
class BatchProgress:
    """A step of job `index` (0-based) of `total`."""

    index: int
    total: int
    seed: int
    stage: str
    step: int | None = None
    steps: int | None = None


BatchProgressFn = Callable[[BatchProgress], None]
JobDoneFn = Callable[[BatchJob, "RunRecord"], None]


def parse_seeds(text: str) -> Seeds:
    """``42`` or ``5-9`` (inclusive, ascending). A single seed's range is checked with the rest
    of the request (`validate_request`); a range's here."""
    single = _SEED_RE.fullmatch(text)
    if single is not None:
        return Seeds(int(single.group(1)))
    pair = _RANGE_RE.fullmatch(text)
    if pair is None:
        raise BatchRequestError("seed", "is not a seed or a range", value=text, hint=_SEED_HINT)
    first, last = int(pair.group(1)), int(pair.group(2))
    if first > last:
        raise BatchRequestError(
            "seed", "runs backwards (FIRST is above LAST)", value=text, hint=_SEED_HINT
        )
    if last > MAX_SEED:
        raise BatchRequestError(
            "seed", f"goes past the largest seed {MAX_SEED}", value=text, hint=_SEED_HINT
        )
    return Seeds(first, last)


def read_prompt_file(path: Path) -> list[PromptLine]:
    """The prompts of a UTF-8 text file, one a line; blank lines and ``#`` comments skipped.

    Only a regular file is read (a FIFO or device is refused without blocking), and at most
    `MAX_PROMPT_FILE_BYTES` of it.
    """
    hint = "Give a UTF-8 text file with one prompt a line (# starts a comment)."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise BatchRequestError(
            "prompt_file", f"cannot be read: {exc.strerror}", value=str(path), hint=hint
        ) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BatchRequestError(
                "prompt_file", "is not a regular file", value=str(path), hint=hint
            )
        data = fh.read(MAX_PROMPT_FILE_BYTES + 1)
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise BatchRequestError(
            "prompt_file",
            f"is larger than {MAX_PROMPT_FILE_BYTES} bytes",
            value=str(path),
            hint=f"Split it into files of at most {MAX_PROMPTS} prompts.",
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchRequestError(
            "prompt_file", f"is not UTF-8 text (byte {exc.start + 1})", value=str(path), hint=hint
        ) from None
    prompts = [
        PromptLine(path, number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not prompts:
        raise BatchRequestError(
            "prompt_file",
            "holds no prompt (blank lines and # comments are skipped)",
            value=str(path),
            hint=hint,
        )
    if len(prompts) > MAX_PROMPTS:
        raise BatchRequestError(
            "prompt_file",
            f"holds {len(prompts)} prompts; at most {MAX_PROMPTS}",
            value=str(path),
            hint=f"Split it into files of at most {MAX_PROMPTS} prompts.",
        )
    return prompts


def _seed_list(seeds: Seeds, count: int | None, batch: int) -> list[int]:
    if seeds.last is not None:
        if count is not None:
            raise BatchRequestError(
                "count",
                "cannot go with a seed range",
                hint="A range FIRST-LAST already says how many images: one per seed.",
            )
        if batch > 1:
            raise BatchRequestError(
                "batch",
                "cannot go with a seed range",
                hint="A seed range makes one image per seed; drop --batch or use --count.",
            )
        wanted = seeds.last - seeds.first + 1
        if wanted > MAX_COUNT:
            raise BatchRequestError(
                "seed",
                f"names {wanted} seeds; at most {MAX_COUNT}",
                value=f"{seeds.first}-{seeds.last}",
                hint="Split the range over several commands.",
            )
        return list(range(seeds.first, seeds.last + 1))
    count = 1 if count is None else count
    if not 1 <= count <= MAX_COUNT:
        raise BatchRequestError(
            "count",
            f"must be from 1 to {MAX_COUNT}",
            value=count,
            hint="Split larger batches over several commands.",
        )
    last = seeds.first + count * batch - 1
    if seeds.first <= MAX_SEED < last:  # a first seed out of range is the request's problem
        raise BatchRequestError(
            "count",
            f"from --seed {seeds.first} goes past the largest seed {MAX_SEED}",
            value=count,
            hint="Start from a smaller --seed, or ask for fewer images.",
        )
    return [seeds.first + k * batch for k in range(count)]


def validate_batch(jobs: Sequence[BatchJob]) -> None:
    """`validate_request` on each prompt's job (seeds are checked already), before the
    catalog is opened; a prompt file line's problem raises `PromptLineError`."""
    seen: set[str] = set()
    for job in jobs:
        if job.request.prompt in seen:
            continue
        seen.add(job.request.prompt)
        try:
            validate_request(job.request)
        except InvalidRequestError as exc:
            if job.source is None:
                raise
            raise PromptLineError(job.source.path, job.source.line, exc) from exc


def expand_batch(
    request: GenerateRequest,
    seeds: Seeds,
    *,
    count: int | None = None,
    prompts: Sequence[PromptLine] | None = None,
) -> list[BatchJob]:
    """The jobs: every prompt (the file's, else the request's) with every seed.

    ``--count N`` gives seeds ``seed, seed+1, ...`` (stepping by ``--batch``, so that every
    image of every job has its own seed); a range ``FIRST-LAST`` one job per seed.
    """
    seed_list = _seed_list(seeds, count, request.batch)
    lines: Sequence[PromptLine | None] = prompts if prompts else [None]
    total = len(lines) * len(seed_list)
    if total > MAX_JOBS:
        raise BatchRequestError(
            "count",
            f"{len(lines)} prompts times {len(seed_list)} seeds make {total} jobs; "
            f"at most {MAX_JOBS}",
            message=f"{len(lines)} prompts times {len(seed_list)} seeds make {total} jobs; "
            f"at most {MAX_JOBS} run in one command",
            hint="Use fewer seeds or split the prompt file.",
        )
    jobs: list[BatchJob] = []
    for line in lines:
        base = request if line is None else dataclasses.replace(request, prompt=line.text)
        for seed in seed_list:
            jobs.append(BatchJob(len(jobs), dataclasses.replace(base, seed=seed), line))
    return jobs


__all__ = [
    "MAX_COUNT",
    "MAX_JOBS",
    "MAX_PROMPTS",
    "MAX_PROMPT_FILE_BYTES",
    "MAX_WORKER_MOUNTS",
    "BatchJob",
    "BatchProgress",
    "BatchProgressFn",
    "BatchRequestError",
    "JobDoneFn",
    "PromptLine",
    "PromptLineError",
    "Seeds",
    "expand_batch",
    "parse_seeds",
    "read_prompt_file",
    "validate_batch",
]
