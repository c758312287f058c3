"""Sentry error reporting (``SENTRY_DSN``): bugs are reported, secrets never leave.

Off unless ``SENTRY_DSN`` is set. Then unhandled errors in HTTP handlers and in the
WebSocket handler are reported with the release (``realtime-pubsub@<version>``) and
environment (``SENTRY_ENVIRONMENT``, else ``ENVIRONMENT``) tags. An HTTP error is
reported where it becomes a 500 (``http_api.errors.report``), after every mapping: a
4xx, a bad body or a database outage (503) is answered, not reported. The aiohttp
integration's own capture of 5xx responses is turned off to avoid duplicates.

What may carry a secret is not collected at all: request bodies are never attached
(``max_request_body_size="never"``: a login body holds a password, which no pattern can
recognize), frame local variables are off (``include_local_variables=False``: a handler's
locals hold bodies, cookies, keys), and ``send_default_pii`` stays off. Then
:class:`Scrubber` runs on every event, transaction and breadcrumb before it leaves:

* it drops ``request.data``, ``request.cookies`` and every frame's ``vars`` whatever put
  them there;
* it replaces with ``[Filtered]`` every value under a key naming a secret (``password``,
  ``token``, ``api_key``, ``secret``, ``session``, ``cookie``, ``authorization``... as a
  substring, any case), in mappings, header pairs, JSON or Python-repr text
  (``"password": "..."``) and query or form text (``password=...``);
* it removes secrets by shape anywhere in any string: JWTs (WS tokens), ``Api-Key`` /
  ``Bearer`` / ``Basic`` credentials, database API keys (``rtk_...``), session ids
  (43-character base64url);
* it removes by exact value every ``API_KEYS`` secret, and every credential of the
  request being handled: the ``Authorization`` credentials, every cookie value, the
  ``X-Api-Key`` header, query values under secret keys, and the string values under
  secret keys of its JSON body (so a password echoed in an exception message goes too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import orjson
import sentry_sdk
from aiohttp import web
from aiohttp.typedefs import Handler
from sentry_sdk.integrations.aiohttp import AioHttpIntegration
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event, Hint

from realtime.aiohttp_adapter import body_read_so_far
from realtime.settings import Settings

FILTERED = "[Filtered]"
MAX_SCRUBBED = 16384
"""Longest string an event keeps (characters); longer ones are cut before scrubbing."""
MIN_REQUEST_SECRET = 4
"""Shortest credential of the current request removed by exact value (characters):
shorter ones would match everywhere and leave nothing to read."""
#: A key naming a secret contains one of these (lower case, ``-`` and ``_`` removed).
_SECRET_WORDS = (
    "password", "passwd", "secret", "token", "apikey", "authorization", "cookie",
    "session", "credential", "dsn", "signingkey", "privatekey", "databaseurl",
)  # fmt: skip
_B64 = "A-Za-z0-9_-"
_SHAPES = (
    # JWTs (three base64url parts, the first two starting with '{"' -> eyJ): WS tokens
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    # database API keys
    re.compile(r"rtk_[A-Za-z0-9_-]{8,}"),
    # session ids: secrets.token_urlsafe(32), 43 base64url characters with upper, lower and digits
    re.compile(rf"(?<![{_B64}])(?=[{_B64}]{{0,42}}[A-Z])(?=[{_B64}]{{0,42}}[a-z])(?=[{_B64}]{{0,42}}[0-9])[{_B64}]{{43}}(?![{_B64}])"),
)  # fmt: skip
# credentials after an auth scheme
_SCHEME = re.compile(r"(?i)\b(api-key|bearer|basic)(\s+)[^\s'\",;]+")
# "password": "..." in JSON or Python reprs (either quote)
# Linear-time patterns: a key is a whole run of name characters (possessive: never given back),
# tested with secret_key() in the replacement; a backslash is matched one way only (an
# ambiguous `\\.|.` backtracks exponentially on a run of backslashes).
_QUOTED = re.compile(r"""(["'])([A-Za-z0-9_-]++)\1(\s*[:=]\s*)(["'])((?:\\.|(?!\4)[^\\])*+)\4""")
# password=... in query strings, form bodies and cookie headers
_ASSIGNED = re.compile(r"""(?<![A-Za-z0-9_-])([A-Za-z0-9_-]++)=([^&\s'",;]++)""")

#: The request being handled (set by :func:`sentry_middleware`), whose credentials the
#: scrubber removes by exact value.
_REQUEST: ContextVar[web.Request | None] = ContextVar("sentry_request", default=None)


def release() -> str:
    """``realtime-pubsub@<installed version>`` (``@unknown`` when not installed)."""
    try:
        return f"realtime-pubsub@{version('realtime-pubsub')}"
    except PackageNotFoundError:
        return "realtime-pubsub@unknown"


def secret_key(key: object) -> bool:
    """``True`` when ``key`` (a field, header, cookie or variable name) names a secret."""
    if not isinstance(key, str):
        return False
    folded = key.lower().replace("-", "").replace("_", "")
    return any(word in folded for word in _SECRET_WORDS)


class Scrubber:
    """Removes secrets from Sentry events and breadcrumbs (see the module docstring).

    Args:
        secrets: exact strings to remove wherever they appear (the configured API keys;
            strings shorter than 8 characters are ignored).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def __call__(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        """Return ``event`` (or a breadcrumb) with every secret replaced by ``[Filtered]``."""
        request = event.get("request")
        if isinstance(request, dict):
            request.pop("data", None)
            request.pop("cookies", None)
        from_request = (s for s in request_secrets(_REQUEST.get()) if len(s) >= MIN_REQUEST_SECRET)
        exact = sorted({*self._secrets, *from_request}, key=len, reverse=True)
        scrubbed: dict[str, Any] = self._walk(event, exact)
        return scrubbed

    def before_send(self, event: Event, hint: Hint) -> Event | None:
        """The ``before_send`` (and ``before_send_transaction``) hook: the event, scrubbed."""
        return cast(Event, self(cast(dict[str, Any], event), hint))

    def text(self, value: str, exact: Iterable[str] = ()) -> str:
        """Scrub one string (``exact``: more strings to remove, longest first). A string longer
        than :data:`MAX_SCRUBBED` characters is cut to that first: the patterns then cost a
        bounded time on the event loop whatever a client sent."""
        if len(value) > MAX_SCRUBBED:
            value = value[:MAX_SCRUBBED] + "[truncated]"
        for secret in exact or self._secrets:
            value = value.replace(secret, FILTERED)
        for shape in _SHAPES:
            value = shape.sub(FILTERED, value)
        value = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{FILTERED}", value)
        value = _QUOTED.sub(_quoted, value)
        return _ASSIGNED.sub(_assigned, value)

    def _walk(self, value: Any, exact: list[str]) -> Any:
        if isinstance(value, str):
            return self.text(value, exact)
        if isinstance(value, dict):
            return {
                k: FILTERED if secret_key(k) else self._walk(v, exact) for k, v in value.items() if k != "vars"
            }  # "vars": a frame's local variables
        if isinstance(value, list | tuple):
            if len(value) == 2 and isinstance(value[0], str) and secret_key(value[0]):
                return [value[0], FILTERED]  # a header as a [name, value] pair
            return [self._walk(v, exact) for v in value]
        return value


def _quoted(m: re.Match[str]) -> str:
    if not secret_key(m[2]):
        return m[0]
    return f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{FILTERED}{m[4]}"


def _assigned(m: re.Match[str]) -> str:
    return f"{m[1]}={FILTERED}" if secret_key(m[1]) else m[0]


def request_secrets(request: web.Request | None) -> Iterator[str]:
    """The credentials a request carries (exact strings, possibly short or empty):
    ``Authorization`` credentials, cookie values, ``X-Api-Key``, query values under
    secret keys, and the strings under secret keys of a JSON body already read."""
    if request is None:
        return
    _, _, credentials = request.headers.get("Authorization", "").partition(" ")
    yield credentials.strip()
    yield request.headers.get("X-Api-Key", "")
    yield from request.cookies.values()
    yield from (v for k, v in request.query.items() if secret_key(k))
    raw = body_read_so_far(request)  # what the handler read; never read here
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        yield from _secret_values(body)


def _secret_values(value: Any) -> Iterator[str]:
    """Strings under secret keys anywhere in a JSON value (iterative: any depth)."""
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, under_secret = stack.pop()
        if isinstance(item, str) and under_secret:
            yield item
        elif isinstance(item, dict):
            stack.extend((v, under_secret or secret_key(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, under_secret) for v in item)


def init_sentry(settings: Settings, *, transport: type[Transport] | Transport | None = None) -> bool:
    """Start the Sentry client when ``SENTRY_DSN`` is set (process-wide, as Sentry is).

    Args:
        settings: the settings (``observability.sentry_dsn`` and ``sentry_environment``,
            ``server.environment``, ``auth.api_keys`` whose secrets are scrubbed).
        transport: a custom transport (tests capture events with one).

    Returns:
        ``True`` if Sentry was started.
    """
    observability = settings.observability
    if not observability.sentry_dsn:
        return False
    scrubber = Scrubber(entry.api_key for entry in settings.auth.api_keys)
    sentry_sdk.init(
        dsn=observability.sentry_dsn,
        release=release(),
        environment=observability.sentry_environment or settings.server.environment,
        integrations=[AioHttpIntegration(failed_request_status_codes=set())],
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrubber.before_send,
        before_send_transaction=scrubber.before_send,
        before_breadcrumb=scrubber,
        transport=transport,
    )
    return True


@web.middleware
async def sentry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request for the scrubber, so an event reported while handling it loses
    the request's credentials wherever they were copied."""
    token = _REQUEST.set(request)
    try:
        return await handler(request)
    finally:
        _REQUEST.reset(token)


def setup_sentry(app: web.Application, settings: Settings) -> None:
    """Add :func:`sentry_middleware` (outermost) when ``SENTRY_DSN`` is set."""
    if settings.observability.sentry_dsn:
        app.middlewares.insert(0, sentry_middleware)
