"""``API_KEYS``: the API keys configured in the environment (README "HTTP API")."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from realtime.envelope import MAX_SUB_LENGTH
from realtime.errors import SettingsError
from topics import BadScope, parse_scopes


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One API key from ``API_KEYS``.

    Attributes:
        user_id: the user the key acts for (the WS token's ``sub``).
        api_key: the secret key.
        scopes: the scopes the key grants.
    """

    user_id: str
    api_key: str = field(repr=False)
    scopes: frozenset[str]


def parse_api_keys(text: str) -> tuple[ApiKeyEntry, ...]:
    """Parse ``API_KEYS``: ``[{"userId": 1, "apiKey": "...", "scopes": ["..."]}]``.

    Raises:
        SettingsError: naming the entry and field at fault, or for JSON that does not parse
            the line, column and reason (never the key itself).
    """
    if not text.strip():
        return ()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:  # its msg names the problem, never the text around it
        raise SettingsError(f"API_KEYS is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise SettingsError("API_KEYS must be a JSON array of objects")
    return tuple(_entry(index, item) for index, item in enumerate(data))


def _entry(index: int, item: object) -> ApiKeyEntry:
    """One ``API_KEYS`` entry, checked (errors name ``API_KEYS[index].field``)."""
    if not isinstance(item, dict):
        raise SettingsError(f"API_KEYS[{index}] must be an object")
    user_id, api_key, scopes = item.get("userId"), item.get("apiKey"), item.get("scopes", [])
    if isinstance(user_id, bool) or not isinstance(user_id, int | str) or user_id == "":
        raise SettingsError(f"API_KEYS[{index}].userId must be a number or string")
    if len(str(user_id)) > MAX_SUB_LENGTH:  # it is the sub of the key's WS tokens
        raise SettingsError(f"API_KEYS[{index}].userId must be at most {MAX_SUB_LENGTH} characters")
    if not isinstance(api_key, str) or len(api_key) < 16:
        raise SettingsError(f"API_KEYS[{index}].apiKey must be a string of 16+ characters")
    if not isinstance(scopes, list):
        raise SettingsError(f"API_KEYS[{index}].scopes must be an array")
    try:
        parsed = parse_scopes(scopes)
    except BadScope as exc:
        raise SettingsError(f"API_KEYS[{index}].scopes: {exc}") from None
    return ApiKeyEntry(str(user_id), api_key, frozenset(parsed))
