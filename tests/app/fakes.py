"""A job runner at the engine edge: what the sandbox service does once a job would start a
container. Everything above it (the use cases, spec building, mount checks, the run record) is
the real code; the fake records each job and paints a small PNG per image."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sandbox.errors import JobCancelledError

IMAGE_ID = "sha256:" + "1" * 64


@dataclass
class Job:
    kind: str
    params: dict[str, Any]
    plugins: list[str]
    models: list[Any]
    model_files: dict[str, Path]


@dataclass
class FakeJobRunner:
    """Stands in for `sandbox.service.SandboxService` in the app's context.

    `gate`, when given, holds every job at its first step until set (or cancelled), so a test
    can cancel a job that is provably running. `error` is raised instead of finishing.
    """

    steps: int = 3
    gate: threading.Event | None = None
    error: BaseException | None = None
    plugin_names: tuple[tuple[str, str], ...] = (("hires-helper", "ab" * 32),)
    image_built: bool = True
    stale_reasons: list[str] = field(default_factory=list)
    engine_problem: str | None = None
    """When set, the engine is unreachable for this reason."""
    jobs: list[Job] = field(default_factory=list)
    waiting_at_gate: threading.Event = field(default_factory=threading.Event)
    closed: bool = False

    # --- what the use cases ask before a run -----------------------------------------------

    def image_status(self, *, check_engine: bool = True) -> Any:
        return SimpleNamespace(
            record=SimpleNamespace(image_id=IMAGE_ID) if self.image_built else None,
            record_problem=None if self.image_built else "no sandbox image has been built",
            engine_reachable=self.engine_problem is None,
            engine_matches=self.engine_problem is None,
            engine_problem=self.engine_problem,
            stale=bool(self.stale_reasons),
            stale_reasons=list(self.stale_reasons),
        )

    def list_plugins(self) -> list[Any]:
        return [SimpleNamespace(name=n, tree_sha256=sha) for n, sha in self.plugin_names]

    def load_image(self) -> Any:
        return SimpleNamespace(image_id=IMAGE_ID)

    # --- the job ---------------------------------------------------------------------------

    def _wait(self, cancel: threading.Event | None, job_id: str) -> None:
        if self.gate is None:
            return
        self.waiting_at_gate.set()
        while not self.gate.wait(0.02):
            if cancel is not None and cancel.is_set():
                break

    def run(
        self,
        kind: str,
        params: dict[str, Any],
        output_dir: Path,
        *,
        plugins: Any = (),
        models: Any = (),
        model_files: dict[str, Path] | None = None,
        on_message: Any = None,
        cancel: threading.Event | None = None,
        **_: Any,
    ) -> Any:
        from PIL import Image

        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs.append(
            Job(kind, dict(params), list(plugins), list(models), dict(model_files or {}))
        )
        for step in range(self.steps):
            if step == 1:
                self._wait(cancel, job_id)
            if cancel is not None and cancel.is_set():
                raise JobCancelledError(f"job {job_id} cancelled", job_id=job_id, log_tail=[])
            if on_message is not None:
                on_message(
                    SimpleNamespace(
                        type="progress",
                        stage="denoise",
                        fraction=step / self.steps,
                        step=step,
                        total=self.steps,
                    )
                )
        if self.error is not None:
            raise self.error
        # The pixels depend on everything that changes them in a real run: the whole spec.
        digest = hashlib.sha256(repr(sorted(params.items())).encode()).digest()
        out = output_dir / "out"
        out.mkdir(parents=True, exist_ok=True)
        images, paths = [], []
        for index in range(int(params.get("batch_size", 1))):
            path = out / f"{index:05d}.png"
            Image.new("RGB", (16, 16), (digest[0], digest[1], index)).save(path)
            seed = int(params.get("seed", 0)) + index
            images.append({"name": f"out/{path.name}", "seed": seed, "infotext": f"Seed: {seed}"})
            paths.append(path)
        return SimpleNamespace(result=SimpleNamespace(data={"images": images}), images=paths)

    def close(self) -> None:
        self.closed = True
