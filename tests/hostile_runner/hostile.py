"""A hostile runner: what an agent that replaced ``moorage_runner`` inside its
sandbox may write on the channel. Copied into a fake ``moorage_runner``
package by tests/integration/test_hostile_runner.py; stdlib only (it runs
inside the sandbox). ``run(name)`` plays one behaviour from ``BEHAVIOURS``."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable

LOADED = b'{"kind":"loaded","version":4}\n'  # channel.CHANNEL_VERSION (tests/unit/test_channel.py keeps it equal)
READY = b'{"kind":"ready"}\n'
BIG = 33 * 1024 * 1024  # over the channel's 32 MiB line cap


def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def read_start() -> None:
    """Wait for the service's ``start`` (past any ``restore`` frames)."""
    while line := sys.stdin.buffer.readline():
        if b'"start"' in line:
            return
    sys.exit(0)


def hang() -> None:
    """Never exit on our own, ignore end of input: the service must kill us."""
    while True:
        time.sleep(3600)


def started(*lines: bytes) -> Callable[[], None]:
    """Load, read ``start``, then send ``lines`` in answer, then hang."""

    def play() -> None:
        write(LOADED)
        read_start()
        for line in lines:
            write(line)
        hang()

    return play


def ready_then(*lines: bytes) -> Callable[[], None]:
    return started(READY, *lines)


def deep(levels: int) -> bytes:
    return b'{"kind":"sdk","message":{"type":"assistant","x":' + b"[" * levels + b"]" * levels + b"}}\n"


def huge_line() -> None:
    write(LOADED)
    read_start()
    write(READY)
    write(b'{"kind":"sdk","message":{"type":"assistant","pad":"' + b"a" * BIG + b'"}}\n')
    hang()


def many_tiny_values() -> None:
    """A line just under the cap, of values that cost ~30x their bytes parsed."""
    write(LOADED)
    read_start()
    write(READY)
    count = (BIG - 2 * 1024 * 1024) // 3
    write(b'{"kind":"sdk","message":{"type":"assistant","v":[' + b"[]," * count + b"[]]}}\n")
    hang()


def flood() -> None:
    """Many valid frames, then a clean exit."""
    write(LOADED)
    read_start()
    write(READY)
    batch = b"".join(
        b'{"kind":"sdk","message":{"type":"stream_event","n":%d,"pad":"%s"}}\n' % (n, b"x" * 512) for n in range(1000)
    )
    for _ in range(100):  # 100k frames, ~55 MB
        write(batch)
    sys.exit(0)


def label_injection() -> None:
    """Strings shaped like Prometheus exposition and log fields, then exit."""
    evil = 'x"} 1\nmoorage_injected_total{tenant="evil'
    write(LOADED)
    read_start()
    write(READY)
    write(json.dumps({"kind": "sdk", "message": {"type": evil, "subtype": evil, "model": evil}}).encode() + b"\n")
    write(json.dumps({"kind": "error", "code": evil, "message": evil}).encode() + b"\n")
    sys.exit(1)


def exit_mid_start() -> None:
    write(LOADED)
    read_start()
    sys.exit(3)


def never_answers() -> None:
    write(LOADED)
    hang()


def ready_before_loaded() -> None:
    write(READY)
    hang()


def old_channel_version() -> None:
    """A runner from an older sandbox image: it speaks channel version 2."""
    write(b'{"kind":"loaded","version":2}\n')
    hang()


def wait_for(kind: bytes) -> None:
    """Read the service's frames up to one of ``kind`` (b'"user"', b'"collect_outputs"')."""
    while line := sys.stdin.buffer.readline():
        if b'"kind":' + kind in line:
            return
    sys.exit(0)


def after_a_turn(*lines: bytes) -> Callable[[], None]:
    """Ready; answer the first user turn with a result; on the ``collect_outputs`` that
    follows, send ``lines`` (the turn's "outputs"), then hang."""

    def play() -> None:
        write(LOADED)
        read_start()
        write(READY)
        wait_for(b'"user"')
        write(b'{"kind":"sdk","message":{"type":"result","subtype":"success","result":"done","is_error":false}}\n')
        wait_for(b'"collect_outputs"')
        for line in lines:
            write(line)
        hang()

    return play


def output(name: str, size: int, data: bytes, last: bool = True) -> bytes:
    frame = {"kind": "output", "name": name, "size": size, "data": base64.b64encode(data).decode(), "last": last}
    return json.dumps(frame).encode() + b"\n"


def exit_before_loaded() -> None:
    sys.exit(0)


def garbage_then_ready() -> None:
    """Stray prints and non-object JSON are tolerated; then a normal start."""
    write(b'Traceback (most recent call last):\n[1, 2, 3]\n"text"\nnull\n\n')
    write(LOADED)
    read_start()
    write(b"42\n")
    write(READY)
    hang()


BEHAVIOURS: dict[str, Callable[[], None]] = {
    "malformed_json": started(b'{"kind":"ready",\n'),
    "non_object_in_braces": started(b'{"kind":"ready"} trailing\n'),
    "huge_line": huge_line,
    "many_tiny_values": many_tiny_values,
    "deep_nesting": started(deep(100_000)),
    "deep_nesting_under_parser_limit": ready_then(deep(150)),
    "sdk_before_ready": started(b'{"kind":"sdk","message":{"type":"assistant"}}\n'),
    "result_before_user": ready_then(b'{"kind":"sdk","message":{"type":"result","subtype":"success"}}\n'),
    "permission_request_outside_a_turn": ready_then(
        b'{"kind":"permission_request","id":"toolu_1","tool":"Bash","input":{}}\n'
    ),
    "rpc_result_from_runner": ready_then(b'{"kind":"rpc_result","id":1,"result":null}\n'),
    "unknown_kind": ready_then(b'{"kind":"bogus"}\n'),
    "kind_not_a_string": started(b'{"kind":["ready"]}\n'),
    "nan": ready_then(b'{"kind":"sdk","message":{"type":"assistant","total_cost_usd":NaN}}\n'),
    "infinity": ready_then(b'{"kind":"sdk","message":{"type":"assistant","total_cost_usd":1e999}}\n'),
    "rpc_bad_params": started(b'{"kind":"rpc","id":1,"method":"store.load","params":[1]}\n'),
    "rpc_bad_params_after_ready": ready_then(b'{"kind":"rpc","id":1,"method":"store.load","params":"x"}\n'),
    "rpc_unknown_method": started(b'{"kind":"rpc","id":1,"method":"__class__","params":{}}\n'),
    "sdk_message_not_an_object": ready_then(b'{"kind":"sdk","message":"hi"}\n'),
    "ready_before_loaded": ready_before_loaded,
    "not_utf8": ready_then(b'{"kind":"sdk","message":{"type":"\xff\xfe"}}\n'),
    "label_injection": label_injection,
    "flood": flood,
    "exit_mid_start": exit_mid_start,
    "exit_before_loaded": exit_before_loaded,
    "old_channel_version": old_channel_version,
    "never_answers": never_answers,
    "garbage_then_ready": garbage_then_ready,
    # Files out (channel 3): outputs nobody asked for, a size that lies, a file over the cap not
    # marked too_large, a name that leaves outputs/, a file_put for no put_file.
    "output_unasked": ready_then(output("a.txt", 1, b"a")),
    "outputs_done_unasked": ready_then(b'{"kind":"outputs_done","count":0}\n'),
    "file_put_unasked": ready_then(b'{"kind":"file_put","path":"/workspace/x","ok":true}\n'),
    "output_lying_size": after_a_turn(output("report.csv", 2, b"abcdef")),
    "output_short_of_its_size": after_a_turn(output("report.csv", 9, b"abc"), b'{"kind":"outputs_done","count":1}\n'),
    "output_over_the_cap": after_a_turn(output("huge.bin", 1 << 40, b"a", last=False)),
    "output_bad_name": after_a_turn(output("../../etc/passwd", 1, b"a")),
    "outputs_done_miscounted": after_a_turn(output("a.txt", 1, b"a"), b'{"kind":"outputs_done","count":5}\n'),
}


def run(name: str) -> None:
    BEHAVIOURS[name]()
