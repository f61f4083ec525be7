"""Fuzzing the runner channel parser: whatever a (replaced) runner writes, the
answer is a typed, validated frame or a ChannelViolation with a stable
reason, never another exception; and the order check raises nothing else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moorage.channel import (
    MAX_DEPTH,
    RPC_METHODS,
    RUNNER_KINDS,
    ChannelViolation,
    Garbage,
    Loaded,
    Phase,
    Prestarted,
    Ready,
    Reason,
    Restored,
    Rpc,
    RunnerChannel,
    RunnerError,
    RunnerFrame,
    Sdk,
    Snapshot,
    Violation,
    decode_frame,
    parse_runner_line,
)

FUZZ = settings(max_examples=3000, deadline=500, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
field_names = st.sampled_from(["id", "method", "params", "message", "ok", "files", "data", "last", "version", "code"])
frame_shaped = st.builds(
    lambda kind, fields: {"kind": kind, **fields},
    st.sampled_from(sorted(RUNNER_KINDS | {"rpc_result", "user", "start"})) | json_values,
    st.dictionaries(
        field_names,
        json_values
        | st.sampled_from(sorted(RPC_METHODS))
        | st.fixed_dictionaries({"type": st.text(max_size=10) | json_values}),
        max_size=5,
    ),
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def assert_validated(frame: RunnerFrame) -> None:
    """A returned frame holds only what its type promises."""
    if isinstance(frame, Sdk):
        assert isinstance(frame.message, dict) and isinstance(frame.message["type"], str)
        assert depth(frame.message) < MAX_DEPTH
        json.dumps(frame.message, allow_nan=False, ensure_ascii=False).encode()  # re-sendable as strict UTF-8
    elif isinstance(frame, Rpc):
        assert frame.method in RPC_METHODS and isinstance(frame.params, dict)
        assert isinstance(frame.id, (int, str)) and not isinstance(frame.id, bool)
        json.dumps(frame.params, allow_nan=False, ensure_ascii=False).encode()
    elif isinstance(frame, Loaded):
        assert isinstance(frame.version, int) and not isinstance(frame.version, bool)
    elif isinstance(frame, RunnerError):
        assert isinstance(frame.message, str)
    elif isinstance(frame, Restored):
        assert isinstance(frame.ok, bool) and isinstance(frame.files, int) and isinstance(frame.message, str)
    elif isinstance(frame, Snapshot):
        assert isinstance(frame.ok, bool) and isinstance(frame.data, str) and isinstance(frame.last, bool)
    else:
        assert isinstance(frame, (Ready, Prestarted, Garbage)), frame


def check(raw: bytes) -> None:
    try:
        frame = parse_runner_line(raw)
    except ChannelViolation as exc:
        assert isinstance(exc.reason, Reason) and len(exc.message) < 200
        assert decode_frame(raw) == Violation(exc.reason, exc.detail)
        return
    assert not isinstance(frame, Violation)
    assert_validated(frame)
    assert decode_frame(raw) == frame
    for phase in Phase:
        for running in (False, True):
            try:
                RunnerChannel(phase).received(frame, running)
            except ChannelViolation as exc:
                assert exc.reason in (Reason.OUT_OF_ORDER, Reason.BAD_FIELD)


@FUZZ
@given(st.binary(max_size=512))
@example(b"{")
@example(b'{"kind":"sdk","message":{"type":"\\udfff"}}')
@example(b'{"kind":"rpc","id":1,"method":"store.load","params":[]}')
@example(b"\xef\xbb\xbf{}")
def test_any_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(frame_shaped)
def test_frame_shaped_objects(frame: dict[str, Any]) -> None:
    check(json.dumps(frame, ensure_ascii=False).encode())


@FUZZ
@given(frame_shaped, st.data())
def test_mutated_frames(frame: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(frame).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.sampled_from([b"[", b"{", b"}", b"NaN", b"\\ud800", b"\xff", b'"', b"1e999", b","]))
    check(bytes(raw))


@FUZZ
@given(st.integers(1, 3 * MAX_DEPTH), st.sampled_from([b"[", b'{"a":']))
def test_nesting_at_every_depth(levels: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = b'{"kind":"sdk","message":{"type":"t","v":' + opener * levels + b"1" + closer * levels + b"}}"
    try:
        frame = parse_runner_line(raw)
    except ChannelViolation as exc:
        assert exc.reason is Reason.TOO_DEEP and levels + 2 > MAX_DEPTH
        return
    assert levels + 2 <= MAX_DEPTH and isinstance(frame, Sdk)
