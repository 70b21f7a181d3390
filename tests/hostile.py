"""A hostile catalog: names, creators, tags, trigger words, versions and files that carry
terminal control sequences, for the display tests of the CLI and the TUI.

Each payload ends in a marker word, so a test can tell "the sequence reached the terminal"
(ESC or the C1/bidi character right before the marker) from "it was shown visibly".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from catalog import repo
from catalog.civitai.types import Model
from catalog.models import LocalFile
from tests.dbfixtures import file_payload, model_payload, version_payload

ESC = "\x1b"
BEL = "\x07"
ST = "\x1b\\"
OSC52 = f"{ESC}]52;c;SEFDS0VE{BEL}"
"""Writes "HACKED" to the clipboard."""
OSC8 = f"{ESC}]8;;https://evil.example/osc8{ST}"
"""Opens a hyperlink to evil.example (closed by OSC8_END)."""
OSC8_END = f"{ESC}]8;;{ST}"
TITLE = f"{ESC}]0;PWNED-TITLE{BEL}"
TITLE2 = f"{ESC}]2;PWNED-TITLE2{ST}"
CLEAR = f"{ESC}[2J{ESC}[3;7H"
"""Clears the screen and moves the cursor."""
C1_CSI = "\u009b2J"
"""CSI as the single C1 character U+009B: clears the screen on terminals that honour C1."""
RLO = "\u202e"
LRI = "\u2066"
PDI = "\u2069"
MARKUP_LINK = "[link=https://evil.example/markup]x[/link]"
"""Rich markup: an OSC 8 link if a front end interprets outside text as markup."""

HOSTILE_MODEL_ID = 990001
SECOND_MODEL_ID = 990002
NEWEST_VERSION_ID = 9900011
LOCAL_VERSION_ID = 9900012
SECOND_VERSION_ID = 9900021
SHARED_SHA256 = "AB" * 32

MODEL_NAME = f"{OSC52}Evil{C1_CSI}Model{MARKUP_LINK}"
CREATOR = f"{TITLE}mallory{RLO}"
TAGS = [f"{OSC8}clickme{OSC8_END}", f"bidi{LRI}tag{PDI}", "del\x7ftag"]
TRIGGER_WORDS = [f"{CLEAR}PWNCLR", f"trig{BEL}ger", f"{OSC52}word"]
NEWEST_VERSION_NAME = f"v2{C1_CSI}{RLO}gnp.exe"
LOCAL_VERSION_NAME = f"v1{TITLE2}"
FILE_NAME = f"{TITLE2}file{RLO}gnp.safetensors"
BASE_MODEL = f"SDXL{ESC}[5m 1.0"
DESCRIPTION = f"<p>{TITLE}about{C1_CSI} {MARKUP_LINK}</p>"
SECOND_NAME = f"{OSC8}Second{OSC8_END}{LRI}model"
SECOND_FILE_NAME = f"dup{ESC}[2J{C1_CSI}.safetensors"

HOSTILE_STRINGS = (
    MODEL_NAME,
    CREATOR,
    *TAGS,
    *TRIGGER_WORDS,
    NEWEST_VERSION_NAME,
    LOCAL_VERSION_NAME,
    FILE_NAME,
    SECOND_NAME,
    SECOND_FILE_NAME,
)

FORBIDDEN_BYTES = (
    b"\x1b]52;",
    b"\x1b]8;;https://evil",
    b"\x1b]0;PWNED",
    b"\x1b]2;PWNED",
    b"\x1b[2J",
    b"\x1b[3;7H",
    b"\x1b[5m",
    b";https://evil.example/markup",
    b"\x07",
    b"\x7f",
    b"\x00",
    *(c.encode() for c in "\u009b\u202e\u2066\u2069"),
)
"""Bytes a command's output must never hold: the injected sequences, BEL, DEL, NUL, C1 CSI
and the bidi controls used above. ``;https://evil.example/markup`` is the target of an OSC 8
link that Rich writes only when it reads a value as markup; shown as text, the value keeps its
``[link=`` brackets instead."""


def find_forbidden(raw: bytes) -> list[bytes]:
    """The forbidden byte strings that occur in `raw`, plus any C1 control (UTF-8 C2 80-9F)."""
    found = [needle for needle in FORBIDDEN_BYTES if needle in raw]
    found += [bytes([0xC2, b]) for b in range(0x80, 0xA0) if bytes([0xC2, b]) in raw]
    return found


def _version(version_id: int, model_id: int, *, index: int, name: str) -> dict[str, Any]:
    primary = file_payload(version_id * 10, primary=True)
    primary["name"] = FILE_NAME
    primary["pickleScanResult"] = f"Success{C1_CSI}"
    return version_payload(
        version_id,
        model_id,
        index=index,
        name=name,
        baseModel=BASE_MODEL,
        trainedWords=TRIGGER_WORDS,
        description=DESCRIPTION,
        files=[primary],
        images=[],
        publishedAt=f"2025-0{3 - index}-02T03:04:05.678Z",
    )


def hostile_models() -> list[Model]:
    """Two models: every displayed text field of the first carries a control sequence."""
    first = model_payload(
        HOSTILE_MODEL_ID,
        name=MODEL_NAME,
        description=DESCRIPTION,
        creator={"username": CREATOR, "image": None},
        tags=TAGS,
        stats={"downloadCount": 9_000_000, "thumbsUpCount": 1},
        modelVersions=[
            _version(NEWEST_VERSION_ID, HOSTILE_MODEL_ID, index=0, name=NEWEST_VERSION_NAME),
            _version(LOCAL_VERSION_ID, HOSTILE_MODEL_ID, index=1, name=LOCAL_VERSION_NAME),
        ],
    )
    second_version = version_payload(
        SECOND_VERSION_ID, SECOND_MODEL_ID, trainedWords=[f"{TITLE}second"], images=[]
    )
    second_version["files"][0]["name"] = SECOND_FILE_NAME
    second = model_payload(
        SECOND_MODEL_ID,
        name=SECOND_NAME,
        creator={"username": f"{C1_CSI}eve", "image": None},
        stats={"downloadCount": 8_000_000, "thumbsUpCount": 1},
        modelVersions=[second_version],
    )
    return [Model.model_validate(first), Model.model_validate(second)]


def seed_hostile(engine: Engine) -> None:
    """Upsert the hostile models, with the older version of the first and the second model's
    primary file "local" and sharing one SHA256 (so `updates` and `duplicates` list them)."""
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, hostile_models(), seen_at=datetime.now(UTC))
        for file_id in (LOCAL_VERSION_ID * 10, SECOND_VERSION_ID * 10):
            session.add(
                LocalFile(
                    file_id=file_id,
                    state="verified",
                    path=f"/nonexistent/{file_id}{ESC}]52;c;SEFDS0VE{BEL}.safetensors",
                    sha256=SHARED_SHA256,
                    size_bytes=1024,
                    verified_at=datetime.now(UTC),
                )
            )


__all__ = [
    "FORBIDDEN_BYTES",
    "HOSTILE_MODEL_ID",
    "HOSTILE_STRINGS",
    "find_forbidden",
    "hostile_models",
    "seed_hostile",
]
