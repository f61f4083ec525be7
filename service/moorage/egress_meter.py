"""Token usage read out of model responses on their way past, sans I/O.

The model proxy feeds every byte of an upstream response to a
``ResponseMeter`` whether or not the sandbox is still listening, and takes
what it has newly learnt after each chunk and once more when the response
ends (however it ends). A streamed response reports usage twice:
``message_start`` (input and cache tokens, the first output token) and
``message_delta`` (cumulative counts, at the end); a plain JSON response
once, in its body. Counts are cumulative and never go down: a delta is what
the latest figure adds to what was already taken.

Upstream usage numbers are trusted, its bytes are not parsed blindly: any
byte sequence is accepted without raising, memory stays bounded (one event of
at most ``MAX_EVENT_BYTES``, a JSON body of at most ``MAX_JSON_BYTES``), and
only non-negative integers below 2**53 count as token figures.
"""

from __future__ import annotations

import json

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
MAX_EVENT_BYTES = 1024 * 1024
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_TOKENS = 2**53
MAX_MODEL_CHARS = 200


def usage_of(value: object) -> dict[str, int]:
    """The token counts of a ``usage`` object; anything else counts as none."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, int] = {}
    for key in USAGE_KEYS:
        count = value.get(key)
        if type(count) is int and 0 <= count < MAX_TOKENS:  # not bool, not float
            out[key] = count
    return out


def model_of(value: object) -> str:
    return value[:MAX_MODEL_CHARS] if isinstance(value, str) else ""


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the limit
        return None


class SseUsageReader:
    """Reads usage out of an SSE byte stream fed in arbitrary chunks."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # no event separator before this offset of _buffer
        self._after_cr = False  # the last chunk ended in CR, which may be half of a CRLF
        self._skipping = False  # inside an event too large to read: drop it whole
        self.model = ""
        self.usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks: already ended the line
        self._after_cr = chunk.endswith(b"\r")
        # SSE lines end in CRLF, LF or CR; read them all as LF.
        self._buffer += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while (end := self._buffer.find(b"\n\n", self._scanned)) >= 0:
            event = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._scanned = 0
            if self._skipping:
                self._skipping = False
            else:
                self._event(event)
        self._scanned = max(0, len(self._buffer) - 1)
        if len(self._buffer) > MAX_EVENT_BYTES:  # no event of ours is this big: drop it
            self._buffer.clear()
            self._scanned = 0
            self._skipping = True

    def _event(self, event: bytes) -> None:
        data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if b"message_start" not in data and b"message_delta" not in data:
            return  # content deltas: the bulk of the stream, never parsed
        parsed = _loads(data)
        if not isinstance(parsed, dict):
            return
        kind = parsed.get("type")
        if kind == "message_start":
            message = parsed.get("message")
            if isinstance(message, dict):
                self.model = model_of(message.get("model")) or self.model
                self.usage.update(usage_of(message.get("usage")))
        elif kind == "message_delta":
            self.usage.update(usage_of(parsed.get("usage")))


class JsonUsageReader:
    """Reads usage out of a JSON Message body; at most ``MAX_JSON_BYTES`` kept."""

    def __init__(self) -> None:
        self._body = bytearray()
        self._overflow = False
        self.model = ""
        self.usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        if self._overflow or len(self._body) + len(chunk) > MAX_JSON_BYTES:
            self._overflow = True
            self._body.clear()
            return
        self._body += chunk

    def finish(self) -> None:
        parsed = _loads(bytes(self._body))
        self._body.clear()
        if isinstance(parsed, dict):
            self.model = model_of(parsed.get("model"))
            self.usage = usage_of(parsed.get("usage"))


class ResponseMeter:
    """One response's usage, handed out as deltas of what was taken before."""

    def __init__(self, streamed: bool) -> None:
        self._reader: SseUsageReader | JsonUsageReader = SseUsageReader() if streamed else JsonUsageReader()
        self._taken: dict[str, int] = {}
        self.finished = False

    @property
    def model(self) -> str:
        return self._reader.model

    @property
    def usage(self) -> dict[str, int]:
        """Everything this response reported so far (the latest figures)."""
        return dict(self._reader.usage)

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    def finish(self) -> None:
        """The response ended (completely or not): read what a body holds."""
        if not self.finished and isinstance(self._reader, JsonUsageReader):
            self._reader.finish()
        self.finished = True

    def take(self) -> dict[str, int]:
        """What the usage grew by since the last ``take`` (empty: nothing new)."""
        delta: dict[str, int] = {}
        for key, count in self._reader.usage.items():
            grown = count - self._taken.get(key, 0)
            if grown > 0:
                delta[key] = grown
                self._taken[key] = count
        return delta
