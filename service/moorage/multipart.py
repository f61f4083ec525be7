"""A streaming ``multipart/form-data`` reader (sans-I/O): bytes in, part events out.

Built on python-multipart's push parser, which keeps no part in memory: ``feed`` returns the events
the bytes given completed (a part's start with its name, filename and content type; slices of its
data; its end), so a caller streams a part of any size with memory bounded by what it feeds at a
time. Bounded: the boundary (70 bytes), the headers of a part (8 lines of ≤ 4 KiB), the number of
parts (``max_parts``). Anything else — no boundary, a broken part, a body that ends before the
closing boundary — is a :class:`MalformedForm` (a ``ValueError``) with a message for the client.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["Event", "FormReader", "MalformedForm", "PartData", "PartEnd", "PartStart", "boundary_of"]


class MalformedForm(ValueError):
    """The body is not a well-formed ``multipart/form-data`` message."""


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None  # as sent (``None``: not a file part)
    content_type: str | None


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header; ``MalformedForm`` otherwise."""
    kind, params = parse_options_header((content_type or "").encode("latin-1", "replace"))
    if kind.lower() != b"multipart/form-data":
        raise MalformedForm("the body must be multipart/form-data")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 70:
        raise MalformedForm("the multipart/form-data body has no usable boundary")
    return boundary


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MalformedForm(f"the {what} is not UTF-8") from None


class FormReader:
    """Feed a form's bytes in order; read back its parts' events."""

    def __init__(self, boundary: bytes, max_parts: int) -> None:
        self._events: list[Event] = []
        self._parts = 0
        self._max_parts = max_parts
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": lambda data, start, end: self._events.append(PartData(bytes(data[start:end]))),
                "on_part_end": lambda: self._events.append(PartEnd()),
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes, in order."""
        if self.ended:
            return []  # after the closing boundary: an epilogue, ignored
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise MalformedForm(f"the multipart/form-data body is malformed: {exc}") from None
        events, self._events = self._events, []
        return events

    def finish(self) -> None:
        """The body ended: it must have ended with the closing boundary."""
        if not self.ended:
            raise MalformedForm("the multipart/form-data body ended before its closing boundary")

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise FormParserError(f"more than {self._max_parts} parts")
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        kind, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if kind.lower() != b"form-data" or b"name" not in params:
            raise FormParserError("a part has no Content-Disposition: form-data with a name")
        filename = params.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self._events.append(
            PartStart(
                _text(params[b"name"], "part name"),
                None if filename is None else _text(filename, "filename").replace("%22", '"'),
                None if content_type is None else _text(content_type, "part's content type").strip(),
            )
        )

    def _end(self) -> None:
        self.ended = True
