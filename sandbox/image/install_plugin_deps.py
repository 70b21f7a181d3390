"""Runs *inside* the offline image build (stdlib only): install each plugin requirement set into
its own directory, never into the worker's venv, and check again that none holds a startup hook.

Usage (from the Dockerfile): ``python3 /plugin-wheels/install_plugin_deps.py WHEELS DEPS``.
``WHEELS/sets.json`` maps each set's key to its lock file (``name==version --hash=...`` lines);
set KEY goes to ``DEPS/KEY`` with ``pip install --target`` (hash-checked, no index, no deps).
Jobs append ``DEPS/KEY`` to ``sys.path`` only when one of their plugins needs it, as a plain
entry, so nothing there runs at start-up; a ``.pth`` file or ``sitecustomize`` found here
anyway (the host refuses such wheels first) fails the build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HOOK_MODULES = ("sitecustomize", "usercustomize")
KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def startup_hooks(target: Path) -> list[str]:
    return sorted(
        name
        for name in os.listdir(target)
        if name.lower().endswith(".pth")
        or any(name == hook or name.startswith(hook + ".") for hook in HOOK_MODULES)
    )


def main(wheels_dir: str, deps_dir: str) -> None:
    wheels, deps = Path(wheels_dir), Path(deps_dir)
    deps.mkdir(parents=True, exist_ok=True)
    sets = json.loads((wheels / "sets.json").read_text())
    if not sets:
        return
    # the worker's venv has no pip (removed after its install); a throwaway one installs these
    pip_env = Path("/tmp/plugin-pip")  # noqa: S108  # inside the offline build, alone in its /tmp
    subprocess.run([sys.executable, "-m", "venv", str(pip_env)], check=True)  # noqa: S603  # fixed argv
    for key, lock in sorted(sets.items()):
        if not KEY_RE.match(key) or "/" in lock:
            sys.exit(f"bad plugin requirement set {key!r} -> {lock!r}")
        target = deps / key
        # fixed argv; key and lock were checked above and come from the host's own sets.json
        subprocess.run(  # noqa: S603
            [
                str(pip_env / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--target",
                str(target),
                "--no-index",
                "--find-links",
                str(wheels),
                "--require-hashes",
                "--only-binary",
                ":all:",
                "--no-deps",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-compile",
                "-q",
                "-r",
                str(wheels / lock),
            ],
            check=True,
        )
        hooks = startup_hooks(target)
        if hooks:
            sys.exit(f"plugin requirement set {key} installed startup hooks: {', '.join(hooks)}")
        # the root filesystem is read-only at run time: bytecode must exist beforehand
        subprocess.run(  # noqa: S603  # fixed argv on a directory this build made
            [sys.executable, "-m", "compileall", "-q", "-j", "0", str(target)],
            stdout=subprocess.DEVNULL,
            check=False,
        )
    shutil.rmtree(pip_env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
