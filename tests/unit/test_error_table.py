"""docs/protocol.md's error-code and close-code tables against the one table
in code (moorage.errors.CODES), both ways."""

from __future__ import annotations

import re
from pathlib import Path

from moorage.errors import CODES, Code, Fatal, close_code

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"


def section(title: str) -> list[str]:
    text = DOC.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def documented_codes() -> dict[str, tuple[str, int]]:
    """code -> (fatal column, HTTP status) from the error-code table."""
    rows: dict[str, tuple[str, int]] = {}
    for line in section("Error codes (stable)"):
        code, fatal, http, _when = cells(line)[:4]
        name = code.strip("`")
        assert name not in rows, f"{name} is documented twice"
        rows[name] = (fatal.replace("—", "no"), int(http))
    return rows


def documented_closes() -> dict[str, int]:
    """code -> close code, from the close-code table (codes named in backticks)."""
    closes: dict[str, int] = {}
    for line in section("Close codes"):
        number, when = cells(line)[:2]
        for name in re.findall(r"`([a-z_]+)`", when):
            if name in {c.value for c in Code}:
                assert name not in closes, f"{name} is under two close codes"
                closes[name] = int(number)
    return closes


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    assert set(documented_codes()) == {c.value for c in Code}
    assert set(CODES) == set(Code), "every code has a row in errors.CODES"


def test_fatality_and_http_status_match_the_doc() -> None:
    doc = documented_codes()
    for code, spec in CODES.items():
        fatal, http = doc[code.value]
        words = {w.strip() for w in fatal.split("/")}
        expected = {Fatal.NO: {"no"}, Fatal.YES: {"yes"}, Fatal.SOMETIMES: {"no", "yes"}}[spec.fatal]
        assert words == expected, f"{code}: doc says {fatal!r}, code says {spec.fatal}"
        assert http == spec.http, f"{code}: doc says HTTP {http}, code says {spec.http}"


def test_close_codes_match_the_doc() -> None:
    doc = documented_closes()
    in_code = {code.value: spec.close for code, spec in CODES.items() if spec.close is not None}
    assert doc == in_code
    for code, spec in CODES.items():
        assert (spec.close is None) == (spec.fatal is Fatal.NO), f"{code}: a close code exactly when it can be fatal"
        assert close_code(code) == (spec.close or 1000)


def test_the_codes_that_used_to_close_with_1000_close_with_1011() -> None:
    for code in (Code.SANDBOX_PIDS_EXHAUSTED, Code.MAX_TURNS_EXCEEDED, Code.INTERNAL):
        assert close_code(code) == 1011
