"""Scope grammar: ``resource:verb[:subresource]``, e.g. ``user:read:remote-control``.

Scopes are compared as whole strings: ``user:read`` does not grant
``user:read:chat`` and ``user:read:chat`` does not grant ``user:read``. Lists of
scopes travel space-separated, as in the ``scope`` claim of RFC 9068 / RFC 8693.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NewType

from topics.errors import BadScope

Scope = NewType("Scope", str)
"""One validated scope string."""

_SCOPE_RE = re.compile(r"[a-z][a-z0-9-]*:[a-z][a-z0-9-]*(?::[a-z][a-z0-9-]*)?")
MAX_SCOPE_BYTES = 128


def parse_scope(value: object) -> Scope:
    """Validate one scope.

    Args:
        value: the candidate scope.

    Returns:
        The scope.

    Raises:
        BadScope: if it is not a string matching ``resource:verb[:subresource]``.
    """
    if not isinstance(value, str) or len(value) > MAX_SCOPE_BYTES:
        raise BadScope(f"scope must be a string of at most {MAX_SCOPE_BYTES} bytes")
    if _SCOPE_RE.fullmatch(value) is None:
        raise BadScope(f"malformed scope {value!r}: expected resource:verb[:subresource]")
    return Scope(value)


def parse_scopes(value: str | Iterable[object]) -> frozenset[Scope]:
    """Validate a space-separated scope string or an iterable of scopes.

    Args:
        value: ``"a:b c:d"`` or ``["a:b", "c:d"]``.

    Returns:
        The set of scopes (empty for an empty string).

    Raises:
        BadScope: if any element is malformed.
    """
    items: Iterable[object] = value.split() if isinstance(value, str) else value
    return frozenset(parse_scope(item) for item in items)
