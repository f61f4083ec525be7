"""Every queue between a sandbox and the service is bounded in bytes, and no
number or string a runner sends reaches a counter or a label unchecked
(issue 10 items 4 and 10). Pure: no sockets, no processes."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, cast

import pytest
from moorage import app as app_module
from moorage.accounting import MAX_RUNNER_USD, Ledger, runner_amount
from moorage.bounded import (
    CHANNEL_LINE_BYTES,
    ByteBudget,
    ByteQueue,
    frame_bytes,
    sdk_buffer_bytes,
    text_bytes,
)
from moorage.channel import Garbage, Rpc
from moorage.errors import Code
from moorage.limits import TokenBucket
from moorage.metrics import Metrics
from moorage.relay import RpcRelay
from moorage.sandbox import docker, kube_sandbox, local
from moorage.sandbox.base import SandboxSpec
from moorage.settings import Settings
from prometheus_client import generate_latest

MiB = 1024 * 1024


async def settle() -> None:
    """Let every runnable task run until it waits (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


# -- the byte budget and queue ------------------------------------------------


def test_a_byte_budget_admits_within_its_limit_and_one_oversized_item_alone() -> None:
    budget = ByteBudget(100)
    assert budget.fits(1000)  # empty: one item of any size
    budget.take(60)
    assert budget.fits(40) and not budget.fits(41)
    budget.give(60)
    budget.take(1000)
    assert not budget.fits(1)  # the oversized item is alone
    budget.give(1000)
    assert budget.used == 0 and budget.fits(100)
    with pytest.raises(ValueError):
        ByteBudget(0)


async def test_a_byte_queue_offer_refuses_what_does_not_fit() -> None:
    queue: ByteQueue[str] = ByteQueue(100)
    assert queue.offer("a", 60) and queue.offer("b", 40)
    assert not queue.offer("c", 1)
    assert queue.bytes == 100 and len(queue) == 2
    assert await queue.get() == "a"
    assert queue.offer("c", 60) and queue.bytes == 100


async def test_a_byte_queue_put_waits_for_room_and_keeps_order() -> None:
    queue: ByteQueue[int] = ByteQueue(100)
    await queue.put(1, 100)
    blocked = asyncio.create_task(queue.put(2, 50))
    await settle()
    assert not blocked.done() and len(queue) == 1  # backpressure: the producer waits
    assert await queue.get() == 1
    await settle()
    assert blocked.done() and await queue.get() == 2


async def test_a_byte_queue_force_join_and_clear() -> None:
    queue: ByteQueue[object] = ByteQueue(10)
    queue.offer("x", 10)
    queue.force(None)  # a sentinel always gets in
    assert len(queue) == 2
    joined = asyncio.create_task(queue.join())
    await settle()
    assert not joined.done()
    queue.clear()
    await settle()
    assert joined.done() and queue.bytes == 0


def test_sizes_are_measured_without_copies_and_deep_frames_are_not_fatal() -> None:
    assert text_bytes("x" * MiB) >= MiB and text_bytes("€" * MiB) >= 2 * MiB
    assert frame_bytes({"kind": "rpc", "params": {"a": "é"}}, unmeasurable=7) == len(
        '{"kind":"rpc","params":{"a":"é"}}'.encode()
    )
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    assert frame_bytes(deep, unmeasurable=7) == 7


# -- the relay (rpc frames) ------------------------------------------------------


class NeverReads:
    """A sandbox whose runner never reads its input: every send blocks."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    handle: dict[str, Any] = {}
    returncode = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.gone.wait()

    async def recv(self) -> dict[str, Any] | None:
        return None

    async def stop(self, grace_s: float) -> int | None:
        return 0

    async def kill(self) -> None:
        pass

    def limit_events(self) -> dict[str, int]:
        return {}


class NoStore:
    durable = True

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        return None


async def test_the_relay_makes_a_flooding_runner_wait_instead_of_queueing_without_bound() -> None:
    """rpc frames whose answers the runner never reads: the relay holds at
    most its byte budget; the next enqueue waits (the pump stops reading)."""
    import structlog

    async def durable() -> None:
        pass

    relay = RpcRelay(cast(Any, NoStore()), structlog.get_logger(), lambda: None, durable, queue_bytes=MiB)
    sandbox = NeverReads()
    waited = None
    for n in range(100):
        frame = Rpc(n, "store.append", {"pad": "x" * 64 * 1024})
        attempt = asyncio.create_task(relay.enqueue(cast(Any, sandbox), frame))
        await settle()
        if not attempt.done():
            waited = n
            break
    assert waited is not None and waited < 20, "the relay kept taking frames"
    assert relay.queued_bytes <= MiB
    sandbox.gone.set()  # the sandbox dies: its sends fail, the queue drains, the producer goes on
    await settle()
    assert attempt.done()
    relay.cancel()


# -- client connections ----------------------------------------------------------


def connection(queue_bytes: int) -> app_module.WsConnection:
    metrics = Metrics(("claude-opus",))
    return app_module.WsConnection(cast(Any, None), metrics, TokenBucket(1, 1), queue_bytes)


def test_a_client_queue_is_bounded_in_bytes_not_frames() -> None:
    """32 MiB frames x 4096 was the bound; now it is the byte budget, and a
    client past it is reported slow (the session drops it)."""
    conn = connection(4 * MiB)
    big = "x" * MiB
    assert all(conn.offer(big) for _ in range(3))
    assert not conn.offer(big)  # the 4th would pass 4 MiB with the headers
    assert not conn.offer("small")  # once behind, it stays dropped
    assert conn.queue.bytes <= 4 * MiB


def test_one_frame_larger_than_the_budget_reaches_a_client_that_keeps_up() -> None:
    conn = connection(64 * 1024)
    assert conn.offer("x" * MiB)  # an empty queue takes it
    assert not conn.offer("y")


def test_a_slow_client_loses_its_backlog_not_its_close() -> None:
    conn = connection(64 * 1024)
    conn.offer("x" * 60_000)
    assert not conn.offer("x" * 60_000)
    conn.close(1008, Code.SLOW_CONSUMER)
    assert len(conn.queue) == 1 and conn.queue.get_nowait() is app_module._CLOSE


def test_a_closing_client_that_kept_up_gets_its_last_frames() -> None:
    conn = connection(64 * 1024)
    conn.offer('{"type":"error"}')
    conn.close(1011, "sandbox_crashed")
    assert conn.queue.get_nowait() == '{"type":"error"}'


def test_one_broadcast_text_is_shared_by_every_client_queue() -> None:
    text = "x" * MiB
    a, b = connection(4 * MiB), connection(4 * MiB)
    assert a.offer(text) and b.offer(text)
    assert a.queue.get_nowait() is b.queue.get_nowait() is text


def test_the_client_queue_setting_defaults_to_the_documented_budget() -> None:
    assert Settings().client_queue_bytes == app_module.CLIENT_QUEUE_BYTES == 4 * MiB


# -- docker read-ahead -----------------------------------------------------------


class Message:
    def __init__(self, data: bytes) -> None:
        self.stream = 1
        self.data = data


class FloodStream:
    """An attached stream from a runner that writes lines and never stops."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.read = 0

    async def read_out(self) -> Message:
        self.read += 1
        await asyncio.sleep(0)
        return Message(self.line)

    async def close(self) -> None:
        pass


async def test_docker_read_ahead_is_bounded_in_bytes() -> None:
    """256 lines of up to 32 MiB were read ahead; now READ_AHEAD_BYTES."""
    line = b"x" * (256 * 1024 - 1) + b"\n"
    stream = FloodStream(line)
    spec = SandboxSpec("s", "b", Path("/nonexistent/workspace"), Path("/nonexistent/model.sock"))
    sandbox = docker.DockerSandbox(cast(Any, None), cast(Any, None), cast(Any, stream), spec, 0)
    try:
        await settle()
        assert sandbox._lines.bytes <= docker.READ_AHEAD_BYTES
        assert stream.read * len(line) <= docker.READ_AHEAD_BYTES + 2 * len(line)
        frame = await sandbox.recv()  # the consumer takes one: the reader reads on
        assert frame == Garbage(len(line))
    finally:
        sandbox._reader.cancel()


# -- one consistent size for the channel and the SDK -----------------------------


def test_the_sdk_buffer_holds_any_accepted_frame_and_fits_the_channel() -> None:
    """The SDK's line buffer is above the largest client frame (with room for
    the CLI's wrapping) and never above the channel's line cap."""
    default = Settings().max_frame_bytes
    assert sdk_buffer_bytes(default) >= 4 * default
    assert sdk_buffer_bytes(1024) >= 8 * MiB
    assert sdk_buffer_bytes(100 * MiB) == CHANNEL_LINE_BYTES
    assert sdk_buffer_bytes(8 * MiB) == 4 * 8 * MiB <= CHANNEL_LINE_BYTES
    with pytest.raises(ValueError):
        Settings(max_frame_bytes=8 * MiB + 1)
    from moorage_runner import channel, runner

    for cap in (local.MAX_FRAME_BYTES, docker.MAX_FRAME_BYTES, kube_sandbox.MAX_FRAME_BYTES, channel.MAX_FRAME_BYTES):
        assert cap == CHANNEL_LINE_BYTES
    options = runner.build_options({"options": {"max_buffer_size": sdk_buffer_bytes(default)}}, "http://x", None)
    assert options.max_buffer_size == sdk_buffer_bytes(default)
    for hostile in (None, -1, True, "9", 10**12):
        size = runner.build_options({"options": {"max_buffer_size": hostile}}, "http://x", None).max_buffer_size
        assert size is not None and 0 < size <= CHANNEL_LINE_BYTES


# -- numbers and labels from a runner ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, -0.01, MAX_RUNNER_USD * 2, 1e308, 10**400, True, False, "1", None, [1], {}],
)
def test_runner_amounts_that_are_not_plausible_are_refused(value: object) -> None:
    assert runner_amount(value, MAX_RUNNER_USD) is None


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 3, MAX_RUNNER_USD])
def test_runner_amounts_that_are_plausible_are_taken(value: object) -> None:
    assert runner_amount(value, MAX_RUNNER_USD) == float(cast(float, value))


def sdk_cost(metrics: Metrics) -> float:
    return float(sum(metrics.cost_usd.labels(model, "sdk")._value.get() for model in metrics.models))


def test_settling_hostile_results_keeps_counters_finite_and_growing_only() -> None:
    """Infinity, NaN, negative, huge, bool totals are ignored; a total that
    drops and rises again is not counted twice."""
    metrics = Metrics(("claude-opus",))
    ledger = Ledger("t")
    totals: list[object] = [math.inf, math.nan, -5.0, 1e308, True, 0.5, 0.1, 0.5, 0.75, "2", 10**400]
    seen = 0.0
    for total in totals:
        ledger.settle_turn({"type": "result", "total_cost_usd": total, "modelUsage": {"x" * 10_000: {}}}, metrics)
        now = sdk_cost(metrics)
        assert math.isfinite(now) and now >= seen
        seen = now
    assert sdk_cost(metrics) == pytest.approx(0.75)
    assert math.isfinite(metrics.cost_discrepancy_usd._value.get())


def test_error_codes_a_runner_chose_never_become_metric_labels() -> None:
    metrics = Metrics(("claude-opus",))
    before = len(generate_latest(metrics.registry))
    for n in range(1000):
        metrics.count_error(f"evil_{n}")
    for hostile in (None, 7, ["sandbox_crashed"], {"a": 1}):
        metrics.count_error(hostile)
    metrics.count_error("sandbox_crashed")
    after = generate_latest(metrics.registry)
    assert len(after) == before and b"evil_" not in after
    assert metrics.errors.labels("sandbox_crashed")._value.get() == 1


def test_model_labels_come_from_the_configured_families_only() -> None:
    metrics = Metrics(("claude-opus", "claude-sonnet"))
    assert metrics.model_label("claude-opus-4-5") == "claude-opus"
    assert metrics.model_label("evil" * 1000) == "other"
    assert metrics.model_label(cast(str, None)) == "other"


def test_the_turn_guard_remembers_a_bounded_number_of_short_message_ids() -> None:
    """A runner sending endless assistant messages with distinct, huge ids
    (each one held in the guard's set) cannot grow it past max_turns + 1."""
    from moorage.protocol import MAX_MESSAGE_ID_CHARS, TurnGuard

    guard = TurnGuard(max_turns=5, timeout_s=60, grace_s=10)
    guard.start(0.0)
    for n in range(2000):
        guard.on_message({"type": "assistant", "message": {"id": f"{n}-" + "x" * 10_000}}, 1.0)
    assert guard.tripped is Code.MAX_TURNS_EXCEEDED
    assert len(guard._seen) <= 6 and all(len(i) <= MAX_MESSAGE_ID_CHARS for i in guard._seen)


class DownStore:
    """A transcript sink whose database is down: appends are kept, unsaved."""

    def __init__(self) -> None:
        self.unsaved: list[Any] = []
        self.up = False

    @property
    def durable(self) -> bool:
        return not self.unsaved

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        self.unsaved.append(params)
        return None

    async def flush(self) -> bool:
        if self.up:
            self.unsaved.clear()
        return self.up


class Answers:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)


async def test_appends_acknowledged_while_the_database_is_down_are_bounded() -> None:
    """With the database down every append is acknowledged and held in
    memory; past the relay's unsaved budget it answers nothing more (the
    runner waits) until the database is back and the backlog written."""
    import structlog

    async def durable() -> None:
        pass

    store = DownStore()
    relay = RpcRelay(cast(Any, store), structlog.get_logger(), lambda: None, durable, unsaved_bytes=MiB)
    sandbox = Answers()
    for n in range(40):
        await relay.enqueue(cast(Any, sandbox), Rpc(n, "store.append", {"entries": [{"pad": "x" * 64 * 1024}]}))
        await settle()
    assert 15 <= len(sandbox.sent) <= 18, "appends past the budget must wait"
    assert len(store.unsaved) == len(sandbox.sent)
    store.up = True  # the flusher (backoff from 0.2 s) writes the backlog, then the rest is answered
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(sandbox.sent) < 40:
        assert loop.time() < deadline, "the relay did not resume after the database came back"
        await asyncio.sleep(0.05)
    relay.cancel()
