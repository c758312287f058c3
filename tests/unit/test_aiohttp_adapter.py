"""The aiohttp adapter's private hooks are valid only for the aiohttp releases it names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import aiohttp
from aiohttp.web_protocol import RequestHandler

from realtime.aiohttp_adapter import AIOHTTP_VERSIONS

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_aiohttp_is_in_the_range_the_adapter_was_checked_against() -> None:
    """An aiohttp upgrade fails here, not in production: re-check the private names the
    adapter uses (its module docstring lists them), then widen ``AIOHTTP_VERSIONS``."""
    low, high = AIOHTTP_VERSIONS
    installed = tuple(int(part) for part in re.findall(r"\d+", aiohttp.__version__)[:2])
    assert low <= installed < high, f"aiohttp {aiohttp.__version__} is outside {AIOHTTP_VERSIONS}"


def test_pyproject_pins_the_same_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pin = next(d for d in deps if re.match(r"aiohttp\b", d))
    (low, high) = AIOHTTP_VERSIONS
    assert pin == f"aiohttp>={low[0]}.{low[1]},<{high[0]}.{high[1]}"


async def test_the_private_names_still_exist() -> None:
    """What the adapter reads from aiohttp's internals (a rename would fail silently)."""
    slots = set(RequestHandler.__slots__)
    assert {"_request_count", "_messages", "_current_request", "_close", "_force_close", "_message_tail"} <= slots
    assert hasattr(aiohttp.web.AppRunner, "_make_server")
    assert "_read_bytes" in aiohttp.web.BaseRequest.ATTRS  # body_read_so_far (a class default, None)
    assert "_kwargs" in vars(aiohttp.web.Server(lambda request: None))  # type: ignore[arg-type,return-value]
