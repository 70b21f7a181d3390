"""Runs *inside* the offline image build (stdlib only): create the worker's venv from the hashed
wheelhouse, check it, prune what a compiler-less sandbox never uses, precompile it.

Usage (from the Dockerfile): ``python3 /wheels/install_venv.py VENV APP_DIR PYTHON_VERSION``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

WHEELS = Path("/wheels")
#: C++ test binaries and headers: the image has no compiler, so nothing can use them.
PRUNE = ("torch/test", "torch/include")


def run(*argv: str) -> None:
    # argv is fixed in this script (interpreter, pip, paths from the Dockerfile), no shell
    subprocess.run(argv, check=True)  # noqa: S603


def main(venv: str, app_dir: str, python_version: str) -> None:
    found = sysconfig.get_python_version()
    if found != python_version:
        sys.exit(f"the wheelhouse targets CPython {python_version}, the base has {found}")
    py = f"{venv}/bin/python"
    run(sys.executable, "-m", "venv", venv)
    run(
        py,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(WHEELS),
        "--require-hashes",
        "--only-binary",
        ":all:",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-compile",
        "-q",
        "-r",
        str(WHEELS / "requirements.lock"),
    )
    run(py, "-m", "pip", "check", "--disable-pip-version-check")
    # pip itself is not needed at run time (no network, no installs in the sandbox)
    run(py, "-m", "pip", "uninstall", "-y", "-q", "--disable-pip-version-check", "pip")
    purelib = Path(
        subprocess.run(  # noqa: S603  # fixed argv: the venv's own interpreter
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for rel in PRUNE:
        shutil.rmtree(purelib / rel, ignore_errors=True)
    (purelib / "assetmgr-worker.pth").write_text(app_dir + "\n")
    # the root filesystem is read-only at run time, so bytecode must exist beforehand
    # (a few vendored files may not compile; pip ignores those too, so this is not fatal)
    subprocess.run(  # noqa: S603  # fixed argv on the venv this build made
        [py, "-m", "compileall", "-q", "-j", "0", str(Path(venv) / "lib")],
        stdout=subprocess.DEVNULL,
        check=False,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
