"""The JavaScript client's copy of the close-code table (``clients/js/src/closeCodes.ts``),
and of it in the bundle the server serves, match :data:`realtime.disconnect.DISCONNECTS`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from realtime.disconnect import DISCONNECTS

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r'^\s*(\d{4}): \{ reason: ("(?:[^"\\]|\\.)*"), reconnect: (true|false) \},$', re.MULTILINE)


def js_table(text: str) -> dict[int, tuple[str, bool]]:
    """The rows of ``CLOSE_CODES`` in TypeScript or JavaScript source: ``{code: (reason, reconnect)}``."""
    start = text.index("CLOSE_CODES")
    body = text[start : text.index("});", start)]
    return {int(code): (json.loads(reason), flag == "true") for code, reason, flag in ROW.findall(body)}


def python_table() -> dict[int, tuple[str, bool]]:
    return {int(code): (row.reason, row.reconnect) for code, row in DISCONNECTS.items()}


def test_the_typescript_table_matches_disconnects() -> None:
    assert js_table((ROOT / "clients/js/src/closeCodes.ts").read_text()) == python_table()


def test_the_served_bundle_carries_the_same_table() -> None:
    assert js_table((ROOT / "http_api/static/realtime-client.js").read_text()) == python_table()


def test_the_parser_reads_every_row() -> None:
    text = (ROOT / "clients/js/src/closeCodes.ts").read_text()
    body = text[text.index("CLOSE_CODES") : text.index("});")]
    assert len(ROW.findall(body)) == body.count("reconnect:") == len(DISCONNECTS)
