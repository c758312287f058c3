"""The close-code table: pure checks, and the README's copy of it."""

from __future__ import annotations

import re
from pathlib import Path

from realtime.disconnect import DISCONNECTS, CloseCode, reason_of, should_reconnect

README = Path(__file__).resolve().parents[2] / "README.md"


def test_table_is_keyed_by_its_codes_and_reasons_fit_a_close_frame() -> None:
    for code, row in DISCONNECTS.items():
        assert row.code is code
        assert 0 < len(row.reason.encode()) <= 123 and row.reason.isascii()
        assert reason_of(code) == row.reason
    assert reason_of(CloseCode.NORMAL) == ""


def test_reconnect_is_decided_by_the_table() -> None:
    assert should_reconnect(CloseCode.SLOW_CONSUMER) and should_reconnect(CloseCode.GOING_AWAY)
    assert not should_reconnect(CloseCode.MESSAGE_TOO_BIG)
    assert not should_reconnect(CloseCode.PROTOCOL_ERROR)
    # not ours (a proxy's code, a dropped connection): may be transient
    assert should_reconnect(None) and should_reconnect(1006) and should_reconnect(4999)
    # the README promise: every private code of ours (4000-4499) means "you may reconnect"
    assert all(row.reconnect for code, row in DISCONNECTS.items() if 4000 <= code < 4500)


def test_readme_close_code_table_matches() -> None:
    text = README.read_text()
    section = text[text.index("| code | reason | reconnect |") :]
    section = section[: section.index("\n\n")]
    rows = re.findall(r"^\| (\d{4}) \| (.+) \| (yes|no) \|$", section, re.MULTILINE)
    documented = {int(code): (description, answer == "yes") for code, description, answer in rows}
    assert documented == {int(code): (row.description, row.reconnect) for code, row in DISCONNECTS.items()}
