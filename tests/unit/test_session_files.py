"""Files in and out of a sandbox, the pure parts: where a resource may be mounted, what an
output may be called, the channel frames (parsed strictly, in the order the runner sends them),
and the service's own count of an output's bytes (a lying runner is a violation)."""

from __future__ import annotations

import base64
import json
from typing import Any

import moorage_runner.channel as runner_channel
import pytest
from moorage import channel, session_paths
from moorage.channel import (
    ChannelViolation,
    CollectOutputs,
    FilePut,
    Output,
    OutputsDone,
    Phase,
    PutFile,
    Reason,
    RunnerChannel,
    parse_runner_line,
)
from moorage.errors import MoorageError
from moorage.outputs import Chunk, OutputCollector, OutputLimits, TooLarge, mime_type
from moorage.resources import FileResource, check_can_add, parse_resource, parse_resources, resources_of, stored
from moorage.session_paths import mount_path_problem, output_name_problem


def line(frame: Any) -> bytes:
    return json.dumps(frame).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- mount paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/workspace/data.csv", "/workspace/a/b/c.txt", "/mnt/session/uploads/file_01", "/mnt/session/uploads/x/y"],
)
def test_mount_paths_under_the_workspace_or_uploads_are_accepted(path: str) -> None:
    assert mount_path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("workspace/data.csv", "absolute"),
        ("/workspace/../etc/passwd", "normalized"),
        ("/workspace/./a", "normalized"),
        ("/workspace//a", "normalized"),
        ("/workspace/a/", "normalized"),
        ("/workspace", "under"),  # the directory itself
        ("/workspace/", "normalized"),
        ("/mnt/session/outputs/report.csv", "under"),  # never where outputs are collected
        ("/mnt/session/uploads", "under"),
        ("/opt/moorage/moorage_runner/runner.py", "under"),  # never over the runner
        ("/etc/passwd", "under"),
        ("/tmp/x", "under"),
        ("/workspace/a\x00b", "control"),
        ("/workspace/a\nb", "control"),
        ("/workspace/" + "a" * 1020, "longer"),
    ],
)
def test_mount_paths_elsewhere_or_unnormalized_are_refused(path: str, why: str) -> None:
    problem = mount_path_problem(path)
    assert problem is not None and why in problem


def test_a_resource_param_defaults_to_uploads_and_refuses_what_it_cannot_honour() -> None:
    assert parse_resource({"type": "file", "file_id": "file_1"}, "r") == FileResource(
        "file_1", "/mnt/session/uploads/file_1"
    )
    assert parse_resource({"type": "file", "file_id": "f", "mount_path": "/workspace/d.csv"}, "r").mount_path == (
        "/workspace/d.csv"
    )
    bad: list[object] = [
        {"type": "file"},
        {"type": "file", "file_id": ""},
        {"type": "file", "file_id": "f", "mount_path": 3},
        {"type": "file", "file_id": "f", "mount_path": "/etc/x"},
        {"type": "file", "file_id": "f", "extra": 1},
        {"type": "file", "file_id": "../../x"},  # the default path would not be normalized
        {"type": "bucket"},
        "file_1",
    ]
    for value in bad:
        with pytest.raises(MoorageError) as caught:
            parse_resource(value, "r")
        assert caught.value.code == "invalid_request", value
    with pytest.raises(MoorageError) as caught:
        parse_resource({"type": "github_repository", "url": "https://github.com/o/r"}, "r")
    assert caught.value.code == "not_supported"


def test_two_resources_on_one_path_and_too_many_are_refused() -> None:
    one = {"type": "file", "file_id": "f1", "mount_path": "/workspace/a"}
    with pytest.raises(MoorageError, match="two resources on /workspace/a"):
        parse_resources([one, {**one, "file_id": "f2"}])
    kept = [stored(FileResource("f1", "/workspace/a"), "2026-01-01T00:00:00Z")]
    with pytest.raises(MoorageError, match="two resources"):
        check_can_add(kept, [FileResource("f2", "/workspace/a")])
    check_can_add(kept, [FileResource("f1", "/workspace/b")])  # the same file twice, on two paths: fine
    with pytest.raises(MoorageError, match="at most"):
        parse_resources([{"type": "file", "file_id": f"f{i}"} for i in range(101)])


def test_stored_resources_are_the_api_objects() -> None:
    item = stored(FileResource("file_1", "/workspace/a"), "2026-01-01T00:00:00Z")
    assert item["id"].startswith("sesrsc_") and item["type"] == "file"
    assert resources_of({"resources": [item, "junk"]}) == [item]
    assert resources_of(None) == [] and resources_of({"resources": "x"}) == []


# -- output names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["report.csv", "charts/q1.png", "a b.txt", "Überblick.md", ".hidden"])
def test_output_names_are_plain_relative_paths(name: str) -> None:
    assert output_name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\x00b", "a\x1bb", "a\\b", "x" * 1025]
)
def test_other_output_names_are_refused(name: str) -> None:
    assert output_name_problem(name) is not None


def test_too_deep_output_names_are_refused() -> None:
    assert output_name_problem("/".join(["d"] * 17) + "/f") is not None
    assert output_name_problem("/".join(["d"] * 16) + "/f") is None


def test_the_session_dir_is_the_channels() -> None:
    assert session_paths.SESSION_DIR == channel.SESSION_DIR == runner_channel.SESSION_DIR


# -- frames ---------------------------------------------------------------------------


def test_the_new_runner_frames_parse() -> None:
    assert parse_runner_line(line({"kind": "file_put", "path": "/workspace/a", "ok": True})) == FilePut(
        "/workspace/a", True, ""
    )
    assert parse_runner_line(
        line({"kind": "output", "name": "r.csv", "size": 3, "data": "YWJj", "last": True})
    ) == Output("r.csv", 3, "YWJj", True)
    assert parse_runner_line(line({"kind": "output", "name": "big", "size": 9, "too_large": True})) == Output(
        "big", 9, "", False, True
    )
    assert parse_runner_line(line({"kind": "outputs_done", "count": 2})) == OutputsDone(2)


@pytest.mark.parametrize(
    "frame",
    [
        {"kind": "output", "name": "../etc/passwd", "size": 1, "data": ""},
        {"kind": "output", "name": "/abs", "size": 1, "data": ""},
        {"kind": "output", "name": "a", "size": -1, "data": ""},
        {"kind": "output", "name": "a", "size": 2**63, "data": ""},
        {"kind": "output", "name": "a", "size": "1", "data": ""},
        {"kind": "output", "name": "a", "size": 1, "data": "YQ==", "too_large": True},
        {"kind": "output", "size": 1, "data": ""},
        {"kind": "outputs_done"},
        {"kind": "outputs_done", "count": True},
        {"kind": "file_put", "path": "", "ok": True},
        {"kind": "file_put", "path": "/workspace/a", "ok": "yes"},
    ],
)
def test_bad_file_frames_are_violations(frame: dict[str, Any]) -> None:
    with pytest.raises(ChannelViolation) as caught:
        parse_runner_line(line(frame))
    assert caught.value.reason is Reason.BAD_FIELD


def test_the_new_service_frames_are_what_the_runner_reads() -> None:
    for frame in (PutFile("/workspace/a", "QQ==", True), CollectOutputs(10, 20)):
        wire = frame.wire()
        assert runner_channel.parse_service_line(channel.encode_frame(wire)) == wire


def test_file_put_only_answers_a_put_that_was_sent() -> None:
    ch = RunnerChannel(Phase.LOADED)
    with pytest.raises(ChannelViolation, match="file_put for no put_file"):
        ch.received(FilePut("/workspace/a", True, ""))
    ch.sent(PutFile("/workspace/a", "", last=False))
    with pytest.raises(ChannelViolation, match="out_of_order"):
        ch.received(FilePut("/workspace/a", True, ""))  # not before its last chunk went out
    ch.sent(PutFile("/workspace/a", "", last=True))
    with pytest.raises(ChannelViolation, match="out_of_order"):
        ch.received(FilePut("/workspace/b", True, ""))
    ch.received(FilePut("/workspace/a", False, "disk full"))  # before start (LOADED): fine
    with pytest.raises(ChannelViolation, match="out_of_order"):
        ch.received(FilePut("/workspace/a", True, ""))  # answered once
    ready = RunnerChannel(Phase.READY)
    ready.sent(PutFile("/mnt/session/uploads/f", "", last=True))
    ready.received(FilePut("/mnt/session/uploads/f", True, ""))  # a live mount


def test_outputs_come_only_between_collect_outputs_and_outputs_done() -> None:
    ch = RunnerChannel(Phase.READY)
    for unasked in (Output("a", 1, "YQ==", True), OutputsDone(0)):
        with pytest.raises(ChannelViolation, match="unasked"):
            ch.received(unasked)
    ch.sent(CollectOutputs(10, 10))
    ch.sent(CollectOutputs(10, 10))  # the next turn ended before the first answer
    ch.received(Output("a", 1, "YQ==", True))
    ch.received(OutputsDone(1))
    ch.received(OutputsDone(0))
    with pytest.raises(ChannelViolation, match="unasked"):
        ch.received(Output("a", 1, "YQ==", True))
    loaded = RunnerChannel(Phase.LOADED)
    loaded.sent(CollectOutputs(10, 10))
    with pytest.raises(ChannelViolation, match="unasked"):
        loaded.received(OutputsDone(0))  # never before the session runs


# -- the service's count of output bytes -----------------------------------------


def collector(file_cap: int = 10, turn_cap: int = 15) -> OutputCollector:
    return OutputCollector(OutputLimits(file_cap, turn_cap))


def test_a_file_in_chunks_is_counted_and_completed() -> None:
    c = collector()
    first = c.feed(Output("r.csv", 5, b64(b"abc"), False))
    assert first == Chunk("r.csv", b"abc", True, False, 5)
    assert c.feed(Output("r.csv", 5, b64(b"de"), True)) == Chunk("r.csv", b"de", False, True, 5)
    assert c.feed(Output("empty", 0, "", True)) == Chunk("empty", b"", True, True, 0)
    assert c.feed(Output("big", 99, "", False, too_large=True)) == TooLarge("big", 99)
    c.done(OutputsDone(3))
    c.feed(Output("r.csv", 1, b64(b"x"), True))  # a later answer may report it again (changed)
    c.done(OutputsDone(1))


@pytest.mark.parametrize(
    ("frames", "detail"),
    [
        ([Output("a", 2, b64(b"abc"), True)], "more bytes than its size"),  # a lying size
        ([Output("a", 4, b64(b"abc"), True)], "fewer bytes than its size"),
        ([Output("a", 11, b64(b"a"), False)], "not marked too_large"),  # over the per-file cap
        ([Output("a", 10, b64(b"a" * 10), True), Output("b", 10, b64(b"b" * 6), True)], "the turn may report"),
        ([Output("a", 2, b64(b"a"), False), Output("b", 1, b64(b"b"), True)], "interleaved"),
        ([Output("a", 2, b64(b"a"), False), Output("a", 3, b64(b"a"), True)], "interleaved"),
        ([Output("a", 2, b64(b"a"), False), Output("b", 1, "", False, True)], "too_large inside"),
        ([Output("a", 1, b64(b"a"), True), Output("a", 1, b64(b"a"), True)], "repeated"),
        ([Output("a", 1, "!!!", True)], "not base64"),
    ],
)
def test_a_runner_that_lies_about_an_output_is_a_violation(frames: list[Output], detail: str) -> None:
    c = collector()
    with pytest.raises(ChannelViolation) as caught:
        for frame in frames:
            c.feed(frame)
    assert caught.value.reason is Reason.BAD_FIELD and detail in caught.value.detail


def test_outputs_done_must_count_what_was_reported_and_close_every_file() -> None:
    c = collector()
    c.feed(Output("a", 1, b64(b"a"), True))
    with pytest.raises(ChannelViolation, match="counts another number"):
        c.done(OutputsDone(2))
    c = collector()
    c.feed(Output("a", 2, b64(b"a"), False))
    with pytest.raises(ChannelViolation, match="inside a file"):
        c.done(OutputsDone(1))


def test_too_many_outputs_in_one_answer_is_a_violation() -> None:
    c = collector(turn_cap=10**9)
    for i in range(1000):
        c.feed(Output(f"f{i}", 0, "", True))
    with pytest.raises(ChannelViolation, match="too many files"):
        c.feed(Output("one-more", 0, "", True))


def test_mime_types_are_guessed_from_the_name() -> None:
    assert mime_type("report.csv") == "text/csv"
    assert mime_type("chart.png") == "image/png"
    assert mime_type("noext") == "application/octet-stream"
