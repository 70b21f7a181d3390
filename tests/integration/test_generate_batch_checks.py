"""`assetmgr generate --count/--seed FIRST-LAST/--prompt-file` refuses what cannot work before
anything runs: the installed script in a subprocess on the synthetic store of
test_generate_validation (no engine, no sandbox image), each refusal one `error:` line, a
`hint:` line, exit 2, and no run recorded or started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_generate_validation import (  # noqa: F401
    NO_IMAGE,
    generate,
    library,
    refused,
)

BASE = ("--model", "base15", "--prompt", "a heron at dawn")
SEED_HINT = "hint: Give --seed N or a range FIRST-LAST, e.g. --seed 5-9 (seeds 0 to 4294967295)."
FILE_HINT = "hint: Give a UTF-8 text file with one prompt a line (# starts a comment)."
TAG_HINT = "hint: Write LoRA tags as <lora:NAME:WEIGHT> (or <lyco:...>), e.g. <lora:inkwash:0.8>."

SEEDS_AND_COUNTS = [
    pytest.param(
        ["--seed", "9-5"],
        ["error: --seed '9-5' runs backwards (FIRST is above LAST)", SEED_HINT],
        id="backwards",
    ),
    pytest.param(
        ["--seed", "5-"], ["error: --seed '5-' is not a seed or a range", SEED_HINT], id="open"
    ),
    pytest.param(
        ["--seed", "abc"], ["error: --seed 'abc' is not a seed or a range", SEED_HINT], id="word"
    ),
    pytest.param(
        ["--seed", "4294967290-4294967296"],
        ["error: --seed '4294967290-4294967296' goes past the largest seed 4294967295", SEED_HINT],
        id="past-the-largest",
    ),
    pytest.param(
        ["--seed", "1-1001"],
        [
            "error: --seed '1-1001' names 1001 seeds; at most 1000",
            "hint: Split the range over several commands.",
        ],
        id="range-too-long",
    ),
    pytest.param(
        ["--seed", "1-3", "--count", "2"],
        [
            "error: --count: cannot go with a seed range",
            "hint: A range FIRST-LAST already says how many images: one per seed.",
        ],
        id="range-and-count",
    ),
    pytest.param(
        ["--seed", "1-3", "--batch", "2"],
        [
            "error: --batch: cannot go with a seed range",
            "hint: A seed range makes one image per seed; drop --batch or use --count.",
        ],
        id="range-and-batch",
    ),
    pytest.param(
        ["--count", "0"],
        [
            "error: --count 0 must be from 1 to 1000",
            "hint: Split larger batches over several commands.",
        ],
        id="count-zero",
    ),
    pytest.param(
        ["--count", "1001"],
        [
            "error: --count 1001 must be from 1 to 1000",
            "hint: Split larger batches over several commands.",
        ],
        id="count-too-many",
    ),
    pytest.param(
        ["--count", "3", "--seed", "4294967294"],
        [
            "error: --count 3 from --seed 4294967294 goes past the largest seed 4294967295",
            "hint: Start from a smaller --seed, or ask for fewer images.",
        ],
        id="count-past-the-largest",
    ),
    pytest.param(
        ["--count", "2", "--seed", str(2**32)],
        [
            "error: --seed 4294967296 is out of range (0 to 4294967295)",
            "hint: --seed takes a value from 0 to 4294967295.",
        ],
        id="first-seed-out-of-range",
    ),
]


@pytest.mark.parametrize(("args", "lines"), SEEDS_AND_COUNTS)
def test_bad_seeds_and_counts_are_refused(library: Path, args: list[str], lines: list[str]) -> None:  # noqa: F811
    assert refused(library, *BASE, *args) == lines


def prompt_file(tmp_path: Path, text: str | bytes, name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def from_file(library: Path, path: Path, *args: str) -> list[str]:  # noqa: F811
    return refused(library, "--model", "base15", "--prompt-file", str(path), *args)


def test_unusable_prompt_files_are_refused(library: Path, tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "none.txt"
    assert from_file(library, missing) == [
        f"error: --prompt-file '{missing}' cannot be read: No such file or directory",
        FILE_HINT,
    ]
    empty = prompt_file(tmp_path, "# only a comment\n\n   \n\t# another\n")
    assert from_file(library, empty) == [
        f"error: --prompt-file '{empty}' holds no prompt (blank lines and # comments are skipped)",
        FILE_HINT,
    ]
    latin = prompt_file(tmp_path, "a heron\nr\xe9veil\n".encode("latin-1"), "latin.txt")
    assert from_file(library, latin) == [
        f"error: --prompt-file '{latin}' is not UTF-8 text (byte 10)",
        FILE_HINT,
    ]
    big = prompt_file(tmp_path, ("a heron\n" * (1 << 17)) + "x", "big.txt")
    assert from_file(library, big) == [
        f"error: --prompt-file '{big}' is larger than 1048576 bytes",
        "hint: Split it into files of at most 1000 prompts.",
    ]
    many = prompt_file(tmp_path, "".join(f"heron {i}\n" for i in range(1001)), "many.txt")
    assert from_file(library, many) == [
        f"error: --prompt-file '{many}' holds 1001 prompts; at most 1000",
        "hint: Split it into files of at most 1000 prompts.",
    ]
    too_many_jobs = prompt_file(tmp_path, "a heron\na crane\n", "two.txt")
    assert from_file(library, too_many_jobs, "--count", "600") == [
        "error: 2 prompts times 600 seeds make 1200 jobs; at most 1000 run in one command",
        "hint: Use fewer seeds or split the prompt file.",
    ]


def test_a_fifo_as_prompt_file_is_refused_without_blocking(
    library: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A FIFO with no writer would block a plain open() forever (until the test's timeout)."""
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)
    assert from_file(library, fifo) == [
        f"error: --prompt-file '{fifo}' is not a regular file",
        FILE_HINT,
    ]


def test_a_bad_line_is_named(library: Path, tmp_path: Path) -> None:  # noqa: F811
    path = prompt_file(tmp_path, "# herons\na heron at dawn\n\na heron <lora:inkwash:abc>\n")
    assert from_file(library, path) == [
        f"error: {path} line 4: --prompt: '<lora:inkwash:abc>' at character 9: weight 'abc' "
        "is not a number",
        TAG_HINT,
    ]
    # a problem only the catalog knows, found before anything runs too, with its own exit code
    path = prompt_file(tmp_path, "a heron at dawn\na heron <lora:nosuch:0.5>\n", "nosuch.txt")
    result = generate(library, "--model", "base15", "--prompt-file", str(path))
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path} line 2: no verified local LORA/LoCon/DoRA file for 'nosuch'",
        "hint: Pull it first (`assetmgr pull VERSION_ID`) or import it (`assetmgr import DIR`).",
    ]


def test_a_file_name_with_terminal_controls_is_shown_cleaned(
    library: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    missing = tmp_path / "p\x1b[31mred.txt"
    lines = from_file(library, missing)
    assert "\x1b" not in "".join(lines)
    assert lines[0] == (
        f"error: --prompt-file '{tmp_path}/p\\x1b[31mred.txt' cannot be read: No such file or "
        "directory"
    )


def test_prompt_and_prompt_file_take_turns(library: Path, tmp_path: Path) -> None:  # noqa: F811
    path = prompt_file(tmp_path, "a heron\n")
    hint = "hint: --prompt runs one prompt; --prompt-file runs each line of a file."
    assert refused(library, *BASE, "--prompt-file", str(path)) == [
        "error: --prompt and --prompt-file cannot go together",
        hint,
    ]
    assert refused(library, "--model", "base15", "--count", "2") == [
        "error: give --prompt or --prompt-file",
        hint,
    ]


def test_a_valid_batch_passes_the_checks(library: Path, tmp_path: Path) -> None:  # noqa: F811
    """The control: every check passes and the batch stops only at the missing image."""
    path = prompt_file(tmp_path, "a heron at dawn\n# skipped\na crane <lora:inkwash:0.5>\n")
    result = generate(
        library, "--model", "base15", "--prompt-file", str(path), "--seed", "4294967294-4294967295"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "stopped after 0 of 4 jobs; the rest never started (`assetmgr runs` lists the recorded "
        "runs)",
        *NO_IMAGE,
    ]
