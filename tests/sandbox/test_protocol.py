"""The job protocol: spec validation and the host's hostile-input parser (no Docker needed)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from assetmgr import display
from sandbox.protocol import (
    ErrorMessage,
    JobSpec,
    Limits,
    LogMessage,
    ModelRef,
    OutputMessage,
    ProgressMessage,
    ProtocolReader,
    ReadyMessage,
    ResultMessage,
    StreamLimits,
    bound_text,
    encode_message,
    register_kind,
)

NONCE = "ab" * 32
JOB = "job-1"


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = {
        "job_id": JOB,
        "nonce": NONCE,
        "kind": "echo",
        "params": {"width": 8, "height": 8},
    }
    base.update(kw)
    return JobSpec.model_validate(base)


def result_line(nonce: str = NONCE, job_id: str = JOB, **data: object) -> bytes:
    return encode_message(ResultMessage(job_id=job_id, nonce=nonce, data=dict(data)))


def test_spec_round_trips_and_is_versioned() -> None:
    s = spec(
        models=[
            {"name": "m.safetensors", "mount_path": "/models/m.safetensors", "sha256": "0" * 64}
        ]
    )
    again = JobSpec.from_json_bytes(s.to_json_bytes())
    assert again == s
    assert json.loads(s.to_json_bytes())["protocol"] == 1
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**json.loads(s.to_json_bytes()), "protocol": 2})


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "nope"},
        {"params": {"width": 0}},  # validated against the kind's model
        {"job_id": "../x"},
        {"nonce": "short"},
        {"unknown_field": 1},
        {"models": [{"name": "m", "mount_path": "/etc/passwd", "sha256": "0" * 64}]},
        {"models": [{"name": "m", "mount_path": "/models/../etc", "sha256": "0" * 64}]},
        {
            "models": [
                {"name": "a", "mount_path": "/models/a", "sha256": "0" * 64},
                {"name": "a", "mount_path": "/models/b", "sha256": "0" * 64},
            ]
        },
        {"params": {"text": "x" * 200_000}},
        {"limits": {"memory_bytes": 1}},
    ],
)
def test_bad_specs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        spec(**change)


def test_params_stay_open_and_new_kinds_register() -> None:
    s = spec(params={"width": 8, "future_option": {"nested": [1, 2]}})
    assert s.params["future_option"] == {"nested": [1, 2]}

    class GenerateParams(BaseModel):
        prompt: str

    register_kind("test_generate", GenerateParams)
    s = spec(kind="test_generate", params={"prompt": "a cat"})
    assert isinstance(s.typed_params(), GenerateParams)
    with pytest.raises(ValidationError):
        spec(kind="test_generate", params={})


def test_model_ref_mount_path_is_one_file_under_models() -> None:
    ModelRef(name="x.safetensors", mount_path="/models/x.safetensors", sha256="f" * 64)
    with pytest.raises(ValidationError):
        ModelRef(name="x", mount_path="/models/sub/x", sha256="f" * 64)


def test_reader_accepts_one_result_with_the_nonce() -> None:
    r = ProtocolReader(job_id=JOB, nonce=NONCE)
    msgs = r.feed(encode_message(ReadyMessage()) + result_line(answer=42))
    assert [m.type for m in msgs] == ["ready", "result"]
    assert r.result is not None and r.result.data == {"answer": 42}
    assert not r.tampered


def test_reader_ignores_wrong_nonce_and_flags_a_second_result() -> None:
    r = ProtocolReader(job_id=JOB, nonce=NONCE)
    r.feed(result_line(nonce="cd" * 32, forged=True))
    r.feed(result_line(job_id="job-2", forged=True))
    assert r.result is None
    assert len(r.violations) == 2
    r.feed(result_line(real=True))
    r.feed(result_line(forged=True))
    assert r.result is not None and r.result.data == {"real": True}
    assert r.tampered


def test_reader_survives_garbage() -> None:
    r = ProtocolReader(job_id=JOB, nonce=NONCE)
    garbage = [
        b"not json\n",
        b"\xff\xfe\x00\n",
        b"[1, 2, 3]\n",
        b'{"type": 5}\n',
        b'{"type": "exploit", "x": 1}\n',
        b'{"type": "progress", "fraction": 7}\n',
        b"[" * 100_000 + b"\n",
        b'{"type": "log", "message": "' + b"x" * 5000 + b'"}\n',
        b"\n\n",
    ]
    for g in garbage:
        assert r.feed(g) == []
    assert r.ignored_lines == 1
    assert r.invalid_lines == 7
    assert r.result is None and not r.flooded


def test_reader_splits_lines_across_chunks() -> None:
    r = ProtocolReader(job_id=JOB, nonce=NONCE)
    data = encode_message(ProgressMessage(stage="s", fraction=0.5)) + result_line()
    got = []
    for i in range(len(data)):
        got += r.feed(data[i : i + 1])
    assert [m.type for m in got] == ["progress", "result"]


def test_reader_bounds_line_length_count_and_bytes() -> None:
    limits = StreamLimits(max_line_bytes=1000, max_lines=10, max_total_bytes=50_000)
    r = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    r.feed(b"A" * 5000)
    r.feed(b"A" * 5000 + b"\n" + encode_message(ReadyMessage()))
    assert r.oversized_lines == 1 and r.ready is not None  # the next line still parses
    for _ in range(20):
        r.feed(encode_message(LogMessage(message="hi")))
    assert r.flooded and any("lines" in v for v in r.violations)
    r2 = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    for _ in range(100):
        r2.feed(b"B" * 999)
    assert r2.flooded and r2.total_bytes <= 51_000
    assert r2.feed(result_line()) == []  # nothing is accepted after a flood


def test_text_from_the_worker_is_kept_as_bounded_data() -> None:
    """The host keeps a worker's text as received, only bounded and encodable; the front
    ends clean it where they show it (one display rule, `assetmgr.display`)."""
    hostile = "ok \x1b[31mred\x1b]0;title\x07 \u202e \u009b2J"
    r = ProtocolReader(job_id=JOB, nonce=NONCE)
    (msg,) = r.feed(encode_message(LogMessage(message=hostile)))
    assert isinstance(msg, LogMessage) and msg.message == hostile
    (err,) = r.feed(b'{"type":"error","code":"x\\u001b","message":"bad \\u202e"}\n')
    assert isinstance(err, ErrorMessage)
    assert err.code == "x\x1b" and err.message == "bad \u202e"
    assert bound_text("tab\tok" * 10, 6) == "tab\tok"
    assert display.clean(msg.message) == (
        "ok \u241b[31mred\u241b]0;title\u2407 \u27e8U+202E\u27e9 \u27e8U+009B\u27e92J"
    )


def test_limits_defaults_are_sane() -> None:
    lim = Limits()
    assert lim.memory_bytes >= lim.tmpfs_bytes
    assert lim.pids > 0 and lim.timeout_s > 0


def output_line(nonce: str = NONCE, job_id: str = JOB, data: bytes = b"x" * 3000) -> bytes:
    import base64

    return encode_message(
        OutputMessage(
            job_id=job_id,
            nonce=nonce,
            name="out/a.png",
            size=len(data),
            data=base64.b64encode(data).decode(),
        )
    )


def test_output_lines_need_a_budget_and_this_jobs_nonce() -> None:
    plain = ProtocolReader(job_id=JOB, nonce=NONCE)  # one-shot jobs: no in-band outputs
    assert plain.feed(output_line()) == [] and plain.violations

    limits = StreamLimits(max_total_bytes=2000, max_lines=3, max_output_bytes=30_000)
    r = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    assert r.feed(output_line(nonce="cd" * 32)) == []  # another job's: an ordinary line
    assert r.feed(output_line(job_id="job-2")) == []
    assert r.flooded  # ... which counts against max_total_bytes

    r = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    line = output_line()
    got = [m for _ in range(5) for m in r.feed(line[:1000]) + r.feed(line[1000:])]
    assert [m.type for m in got] == ["output"] * 5 and not r.flooded  # outside max_total_bytes
    assert r.output_lines == 5 and r.lines == 0
    assert [m.type for m in r.feed(result_line())] == ["result"]
    assert r.feed(output_line()) == []  # after the result: an ordinary (too long) line
    assert r.flooded and r.output_lines == 5

    r = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    for _ in range(8):
        r.feed(output_line())
    assert r.flooded and r.output_lines < 8
    r = ProtocolReader(job_id=JOB, nonce=NONCE, limits=limits)
    r.feed(b'{"type":"output","job_id":"job-1","nonce":"' + b"ab" * 32 + b'","data":5}\n')
    assert r.invalid_lines == 1 and r.lines == 1  # a broken output line is an ordinary line
