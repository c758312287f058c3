"""Sentry error reporting (``SENTRY_DSN``), with secrets scrubbed from every event.

Off unless ``SENTRY_DSN`` is set. Then unhandled errors in HTTP handlers and in the
WebSocket handler are reported with the release (``realtime-pubsub@<version>``) and
environment (``SENTRY_ENVIRONMENT``, else ``ENVIRONMENT``) tags. The JSON error
middleware turns every exception into a 500 response, so :func:`sentry_middleware`
(innermost) reports the original exception, and the aiohttp integration's own capture
of 5xx responses is turned off to avoid duplicates.

:func:`scrub_event` runs on every event before it leaves the process: it removes
``Authorization``, ``Cookie`` and the like, any field named like a token or API key,
JWT-looking strings, ``Api-Key``/``Bearer`` credentials, database API keys
(``rtk_...``) and every configured ``API_KEYS`` secret, wherever they appear (headers,
query strings, exception messages, local variables, breadcrumbs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import sentry_sdk
from aiohttp import web
from aiohttp.typedefs import Handler
from sentry_sdk.integrations.aiohttp import AioHttpIntegration
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event, Hint

from realtime.settings import Settings

FILTERED = "[Filtered]"
_SENSITIVE_KEYS = frozenset(
    {
        "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
        "auth_token", "token", "access_token", "refresh_token", "id_token",
        "apikey", "api_key", "api-key", "password", "secret", "client_secret",
        "dsn", "sentry_dsn", "ws_signing_keys", "api_keys", "database_url",
    }
)  # fmt: skip
_PATTERNS = (
    # JWTs (three base64url parts, the first two starting with '{"' -> eyJ)
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    # credentials after an auth scheme
    re.compile(r"(?i)\b(api-key|bearer|basic)(\s+)[^\s'\",;]+"),
    # database API keys
    re.compile(r"rtk_[A-Za-z0-9_-]{8,}"),
    # secrets in query strings and form bodies
    re.compile(r"(?i)\b(auth_token|access_token|token|api_?key|apikey|password)=[^&\s'\"]+"),
)


def release() -> str:
    """``realtime-pubsub@<installed version>`` (``@unknown`` when not installed)."""
    try:
        return f"realtime-pubsub@{version('realtime-pubsub')}"
    except PackageNotFoundError:
        return "realtime-pubsub@unknown"


class Scrubber:
    """Removes secrets from a Sentry event (a ``before_send`` hook).

    Args:
        secrets: exact strings to remove wherever they appear (the configured API keys).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def __call__(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        """Return ``event`` (or a breadcrumb) with every secret replaced by ``[Filtered]``."""
        scrubbed: dict[str, Any] = self._walk(event)
        return scrubbed

    def before_send(self, event: Event, hint: Hint) -> Event | None:
        """The ``before_send`` hook: the event, scrubbed."""
        return cast(Event, self(cast(dict[str, Any], event), hint))

    def text(self, value: str) -> str:
        """Scrub one string."""
        for secret in self._secrets:
            value = value.replace(secret, FILTERED)
        value = _PATTERNS[0].sub(FILTERED, value)
        value = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{FILTERED}", value)
        value = _PATTERNS[2].sub(FILTERED, value)
        return _PATTERNS[3].sub(lambda m: m.group(0).split("=", 1)[0] + "=" + FILTERED, value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: FILTERED if _sensitive(k) else self._walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if len(value) == 2 and isinstance(value[0], str) and _sensitive(value[0]):
                return [value[0], FILTERED]  # a header as a [name, value] pair
            return [self._walk(v) for v in value]
        return value


def _sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _SENSITIVE_KEYS


def init_sentry(settings: Settings, *, transport: type[Transport] | Transport | None = None) -> bool:
    """Start the Sentry client when ``SENTRY_DSN`` is set (process-wide, as Sentry is).

    Args:
        settings: the settings (``sentry_dsn``, ``sentry_environment``, ``environment``,
            ``api_keys`` whose secrets are scrubbed).
        transport: a custom transport (tests capture events with one).

    Returns:
        ``True`` if Sentry was started.
    """
    if not settings.sentry_dsn:
        return False
    scrubber = Scrubber(entry.api_key for entry in settings.api_keys)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=release(),
        environment=settings.sentry_environment or settings.environment,
        integrations=[AioHttpIntegration(failed_request_status_codes=set())],
        before_send=scrubber.before_send,
        before_breadcrumb=scrubber,
        transport=transport,
    )
    return True


@web.middleware
async def sentry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Report an unhandled exception (not an HTTP error response) to Sentry, then re-raise
    it for the JSON error middleware to answer 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        sentry_sdk.capture_exception(exc)
        raise


def setup_sentry(app: web.Application, settings: Settings) -> None:
    """Add :func:`sentry_middleware` (innermost) when ``SENTRY_DSN`` is set."""
    if settings.sentry_dsn:
        app.middlewares.append(sentry_middleware)
