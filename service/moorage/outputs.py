"""A turn's outputs, without I/O: what the runner reports after ``collect_outputs``, checked.

The runner walks /mnt/session/outputs and sends each new or changed file as ``output`` frames
(base64 chunks, ``last`` on the final one) or, over the per-file cap, one ``too_large`` frame
without data; then ``outputs_done``. Everything in them is the runner's claim, so
``OutputCollector`` counts the bytes itself: a file whose bytes run past the size it declared,
past the per-file cap (it should have said ``too_large``) or past the turn's cap, a declared size
the bytes do not reach, chunks of two files interleaved, a name reported twice in one answer,
more than ``MAX_OUTPUTS`` files, or a count that does not match, is a ``ChannelViolation`` (the
session ends, ``sandbox_crashed``). Unasked frames are refused earlier, by
``channel.RunnerChannel``.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass, field

from .channel import ChannelViolation, Output, OutputsDone, Reason

MAX_OUTPUTS = 1000  # files reported in one answer
DEFAULT_MIME_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class OutputLimits:
    max_file_bytes: int
    max_turn_bytes: int


@dataclass(frozen=True)
class Chunk:
    """Bytes of the output ``name``: ``first`` opens it, ``last`` completes it (``size`` bytes)."""

    name: str
    data: bytes
    first: bool
    last: bool
    size: int


@dataclass(frozen=True)
class TooLarge:
    """The output ``name`` is over the per-file cap: not stored, a notice says so."""

    name: str
    size: int


def mime_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or DEFAULT_MIME_TYPE


def _bad(detail: str) -> ChannelViolation:
    return ChannelViolation(Reason.BAD_FIELD, f"output: {detail}")


@dataclass
class OutputCollector:
    """The runner's answers to ``collect_outputs``, one after the other (the channel keeps
    them unasked-free and in order)."""

    limits: OutputLimits
    _open: str | None = None  # the file whose chunks are coming
    _declared: int = 0
    _received: int = 0
    _turn_bytes: int = 0
    _names: set[str] = field(default_factory=set)  # reported in this answer

    def feed(self, frame: Output) -> Chunk | TooLarge:
        if self._open is None and (frame.name in self._names or len(self._names) >= MAX_OUTPUTS):
            raise _bad("a name repeated, or too many files")
        if frame.too_large:
            if self._open is not None:
                raise _bad("too_large inside another file")
            self._names.add(frame.name)
            return TooLarge(frame.name, frame.size)
        first = self._open is None
        if first:
            if frame.size > self.limits.max_file_bytes:
                raise _bad("a file over the cap was not marked too_large")
            self._open, self._declared, self._received = frame.name, frame.size, 0
            self._names.add(frame.name)
        elif frame.name != self._open or frame.size != self._declared:
            raise _bad("chunks of two files interleaved")
        try:
            data = base64.b64decode(frame.data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("data is not base64") from None
        self._received += len(data)
        self._turn_bytes += len(data)
        if self._received > self._declared:
            raise _bad("more bytes than its size")
        if self._turn_bytes > self.limits.max_turn_bytes:
            raise _bad("more bytes than the turn may report")
        if frame.last:
            if self._received != self._declared:
                raise _bad("fewer bytes than its size")
            self._open = None
        return Chunk(frame.name, data, first, frame.last, self._declared)

    def done(self, frame: OutputsDone) -> None:
        """The answer ended: the next one starts afresh."""
        if self._open is not None:
            raise _bad("outputs_done inside a file")
        if frame.count != len(self._names):
            raise _bad("outputs_done counts another number of files")
        self._names.clear()
        self._turn_bytes = 0
