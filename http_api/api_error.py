"""The one error type of the HTTP API: what went wrong, independent of how it is written.

A handler (or anything it calls) raises an :class:`ApiError`; a middleware renders it
with the renderer of the route family (:mod:`http_api.render`): the plain JSON
``{"error": "<code>", "message": ...}`` everywhere, the e-dream envelope
``{"success": false, "data": ..., "message": ..., "errorCode": ...}`` under ``/api/v1``.
The code is stable and follows from the status alone (:data:`CODES`)::

    ApiError            status, message, fields, extra, headers
    ├── AuthError       401 (or 403) with an AuthReason; the envelope never tells why
    ├── InvalidFields   400: marshmallow's messages, one entry per field
    └── BodyError       400/415: an unusable request body (http_api.body)

No I/O and no aiohttp here: errors are built and inspected in plain Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from realtime.http_errors import ERROR_CODES

CODES: dict[int, str] = {
    **ERROR_CODES,  # the ones the engine answers itself, before aiohttp (one table for both)
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
"""The plain renderer's stable ``error`` code of each status (``"error"`` for others)."""


class AuthReason(StrEnum):
    """Why a caller was refused: the ``reason`` label of ``realtime_auth_failures_total``.

    Set where the failure is raised and read from the error, never from its message.
    """

    MISSING_CREDENTIALS = "missing_credentials"
    """No ``Authorization`` header and no usable cookie."""
    BAD_SCHEME = "bad_scheme"
    """An ``Authorization`` scheme this server does not take (or one without credentials)."""
    INVALID_CREDENTIALS = "invalid_credentials"
    """Unknown, wrong, revoked or malformed credentials (an API key, a password, a JWT)."""
    EXPIRED = "expired"
    """A credential that was valid and has expired (a JWT past its ``exp``)."""
    OTHER = "other"
    """Anything else (e.g. the account behind a valid token is disabled)."""
    FORBIDDEN = "forbidden"
    """Authenticated, but not allowed (403): a missing scope, a cross-site request."""


class ApiError(Exception):
    """An HTTP error answer: raise it from a handler; a middleware renders it.

    Args:
        status: the HTTP status (4xx or 5xx).
        message: for the client (a lower-case clause without a trailing period, as the
            plain renderer shows it); ``None``: the renderer's standard message for ``status``.
        fields: field -> list of problems (marshmallow's shape, possibly nested): the
            plain body's ``fields``, the envelope's ``data`` as ``[{"field", "message"}]``.
        extra: more members of the plain body (e.g. ``missing_scopes``).
        headers: more response headers (e.g. ``Retry-After``).
        sentence: the envelope's message when it differs from ``message`` (a capitalized
            sentence); ``None``: ``message``.
    """

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        fields: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        sentence: str | None = None,
    ) -> None:
        super().__init__(message or phrase(status))
        self.status = status
        self.message = message
        self.fields = dict(fields) if fields else None
        self.extra = dict(extra) if extra else {}
        self.headers = dict(headers) if headers else {}
        self.sentence = sentence

    @property
    def code(self) -> str:
        """The stable code of the plain renderer (:data:`CODES`)."""
        return CODES.get(self.status, "error")

    @property
    def reason(self) -> AuthReason | None:
        """Why the caller was refused, for authentication failures (else ``None``)."""
        return None

    def envelope_message(self) -> str | None:
        """The envelope's ``message`` (``None``: the standard one of the status)."""
        return self.sentence or self.message


class AuthError(ApiError):
    """The caller is not authenticated (401) or not allowed (403, reason ``FORBIDDEN``).

    The plain body explains (``message``, ``missing_scopes``); the envelope answers only
    the standard ``Unauthorized.`` / ``Action not allowed.``, as the e-dream API does.

    Args:
        reason: why (:class:`AuthReason`); ``FORBIDDEN`` makes it a 403.
        message: for the client; never an echo of the credential.
        missing_scopes: the scopes the caller lacks (403 only), sorted.
    """

    def __init__(self, reason: AuthReason, message: str, *, missing_scopes: list[str] | None = None) -> None:
        status = 403 if reason is AuthReason.FORBIDDEN else 401
        super().__init__(status, message, extra={"missing_scopes": missing_scopes} if missing_scopes else None)
        self._reason = reason

    @property
    def reason(self) -> AuthReason:
        """Why the caller was refused."""
        return self._reason

    def envelope_message(self) -> str | None:
        """Always the standard message: the envelope does not say why."""
        return None


class InvalidFields(ApiError):
    """400: values that do not validate (marshmallow's ``ValidationError.messages``).

    Args:
        messages: field -> problems (nested for nested schemas), or a list of problems
            with the whole body (then filed under ``"body"``).
    """

    def __init__(self, messages: Mapping[str, Any] | list[Any]) -> None:
        fields = messages if isinstance(messages, Mapping) else {"body": messages}
        super().__init__(400, f"invalid field(s): {', '.join(sorted(map(str, fields)))}", fields=fields)

    def envelope_message(self) -> str:
        """The problem itself when there is one, else ``Invalid request.``."""
        errors = field_errors(self.fields or {})
        return errors[0]["message"] if len(errors) == 1 else "Invalid request."


def phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (``"Not Found"``), ``"Error"`` if unknown."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_errors(fields: Mapping[str, Any]) -> list[dict[str, str]]:
    """``fields`` (marshmallow's shape) as the envelope's ``[{"field": ..., "message": ...}]``.

    Sorted by field; a nested field is named ``outer.inner``.
    """
    out: list[dict[str, str]] = []
    for field, value in sorted(fields.items()):
        if isinstance(value, Mapping):
            out.extend({"field": f"{field}.{e['field']}", "message": e["message"]} for e in field_errors(value))
        else:
            items = value if isinstance(value, list) else [value]
            out.extend({"field": str(field), "message": str(m)} for m in items)
    return out
