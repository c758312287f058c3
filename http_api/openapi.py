"""OpenAPI 3 description (``/api/v1/openapi.json``) and a docs page (``/api/v1/api-docs``).

Built with apispec from the marshmallow schemas, once, when first asked for. Every route
of the app is listed: the ones in :data:`OPERATIONS` in detail, any other with the first
line of its handler's docstring.

The docs page is Swagger UI served by this server: its script and stylesheet come from the
``swagger-ui-py`` package, the page and its start-up script from ``http_api/static``, so it
works offline and its Content-Security-Policy (:data:`DOCS_CSP`) allows only ``'self'``.
"""

from __future__ import annotations

import importlib.util
import inspect
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from http_api import schemas as s
from http_api.auth import WsTokenRequest
from http_api.errors import json_response
from http_api.history import HistoryQuery, HistorySchema
from http_api.login import LoginRequest
from http_api.presence import PresenceSchema, PresenceStatsSchema

#: A cache holding ``{"spec": document}`` once built.
SPEC = web.AppKey("openapi_spec", dict)
_AUTH: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}, {"session": []}]
_COMPONENTS = {
    "Dream": s.DreamSchema,
    "DreamList": s.DreamListSchema,
    "DreamEnvelope": s.DreamEnvelopeSchema,
    "DreamCreate": s.DreamCreateSchema,
    "DreamUpdate": s.DreamUpdateSchema,
    "Processed": s.ProcessedSchema,
    "Failed": s.FailedSchema,
    "RemoteControl": s.RemoteControlSchema,
    "Login": LoginRequest,
    "WsTokenRequest": WsTokenRequest,
    "History": HistorySchema,
    "Presence": PresenceSchema,
    "PresenceStats": PresenceStatsSchema,
    "RemoteControlDevices": s.RemoteControlDevicesSchema,
}


def _envelope(ref: str | None, status: int = 200, description: str = "success") -> dict[str, Any]:
    data: dict[str, Any] = {"$ref": f"#/components/schemas/{ref}"} if ref else {"nullable": True}
    body = {
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "data": data, "message": {"type": "string"}},
    }
    return {str(status): {"description": description, "content": {"application/json": {"schema": body}}}}


def _op(
    summary: str, *, body: str | None = None, ok: str | None = "DreamEnvelope", status: int = 200
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": _AUTH, "responses": {**_envelope(ok, status), **_ERRORS}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_ERRORS = {
    "400": {"$ref": "#/components/responses/Error"},
    "401": {"$ref": "#/components/responses/Error"},
    "403": {"$ref": "#/components/responses/Error"},
    "404": {"$ref": "#/components/responses/Error"},
    "503": {"$ref": "#/components/responses/Error"},
}
_PLAIN_ERRORS = {str(status): {"$ref": "#/components/responses/PlainError"} for status in (400, 401, 403, 404, 503)}
_PLAIN_ERROR = {
    "description": 'an error: {"error": code, "message": str}, with "fields" (400) or "missing_scopes" (403)',
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object"},
                    "missing_scopes": {"type": "array", "items": {"type": "string"}},
                },
            }
        }
    },
}
_TOPIC_PARAM = {"in": "path", "name": "topic", "required": True, "schema": {"type": "string"}}


def _presence_op(summary: str, schema: str) -> dict[str, Any]:
    ok = {"description": "the topic's presence", "content": {"application/json": {"schema": schema}}}
    return {
        "summary": summary,
        "security": _AUTH,
        "parameters": [_TOPIC_PARAM],
        "responses": {"200": ok, **_PLAIN_ERRORS},
    }


_UUID_PARAM = {"in": "path", "name": "uuid", "required": True, "schema": {"type": "string", "format": "uuid"}}

#: ``(method, path) -> operation`` for the routes described in detail.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/dream"): {
        **_op("List dreams, newest first", ok="DreamList"),
        "parameters": [{"in": "query", "schema": s.DreamListQuerySchema}],
    },
    ("POST", "/api/v1/dream"): _op("Create a dream (creators and admins)", body="DreamCreate", status=201),
    ("GET", "/api/v1/dream/my-dreams"): _op("The caller's dreams", ok="DreamList"),
    ("GET", "/api/v1/dream/{uuid}"): _op("One dream"),
    ("PUT", "/api/v1/dream/{uuid}"): _op("Update a dream (owner or admin)", body="DreamUpdate"),
    ("DELETE", "/api/v1/dream/{uuid}"): _op("Soft-delete a dream (owner or admin)"),
    ("POST", "/api/v1/dream/{uuid}/status/processed"): _op(
        "Mark processed (admin or dream:write:status)", body="Processed"
    ),
    ("POST", "/api/v1/dream/{uuid}/status/failed"): _op("Mark failed (admin or dream:write:status)", body="Failed"),
    ("POST", "/api/v1/dream/{uuid}/status/processing"): _op("Mark processing (admin or dream:write:status)"),
    ("PUT", "/api/v1/dream/{uuid}/upvote"): _op("Upvote (one vote per user)"),
    ("PUT", "/api/v1/dream/{uuid}/downvote"): _op("Downvote (one vote per user)"),
    ("PUT", "/api/v1/dream/{uuid}/unvote"): _op("Remove the caller's vote"),
    ("POST", "/auth/login"): {
        "summary": "Built-in login: sets the session cookie (same 401 for wrong email or password; 429 when limited)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Login"}}},
        "responses": {"200": {"description": "logged in"}, "401": {"description": "wrong email or password"}},
    },
    ("POST", "/auth/ws"): {
        "summary": "Issue a WS token: the caller's scopes, narrowed by scope",
        "security": _AUTH,
        "requestBody": {"required": False, "content": {"application/json": {"schema": "WsTokenRequest"}}},
        "responses": {"200": {"description": '{"token": str, "expires_in": seconds, "scope": str}'}},
    },
    ("GET", "/history/{topic}"): {
        "summary": "A topic's kept publications after since, oldest first (realtime:history, or who may LISTEN)",
        "security": _AUTH,
        "parameters": [
            {"in": "path", "name": "topic", "required": True, "schema": {"type": "string"}},
            {"in": "query", "schema": HistoryQuery},
        ],
        "responses": {
            "200": {"description": "a page", "content": {"application/json": {"schema": "History"}}},
            **_PLAIN_ERRORS,
        },
    },
    ("GET", "/presence/{topic}"): _presence_op(
        "Who listens to a topic, on every instance: counts and clients (realtime:presence, or who may LISTEN)",
        "Presence",
    ),
    ("GET", "/presence/{topic}/stats"): _presence_op(
        "How many listen to a topic, on every instance: counts only (realtime:presence, or who may LISTEN)",
        "PresenceStats",
    ),
    ("GET", "/api/v1/remote-control/devices"): _op(
        "How many of the caller's devices listen on its remote-control topic", ok="RemoteControlDevices"
    ),
    ("POST", "/api/v1/remote-control"): _op(
        "Send a remote-control event to every device of the caller",
        body="RemoteControl",
        ok="RemoteControl",
        status=202,
    ),
}


def _paths(app: web.Application) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        raw = info.get("path") or info.get("formatter") or ""
        if not raw or route.method == "HEAD":
            continue
        path = raw
        for concrete in _expand(path):
            op = OPERATIONS.get((route.method, concrete)) or _generic(route.handler)
            if "{uuid}" in concrete:
                op = {**op, "parameters": [*op.get("parameters", []), _UUID_PARAM]}
            paths.setdefault(concrete, {})[route.method.lower()] = op
    return paths


def _expand(path: str) -> list[str]:
    for name, choices in (
        ("{status}", ("processing", "processed", "failed")),
        ("{vote}", ("upvote", "downvote", "unvote")),
    ):
        if name in path:
            return [path.replace(name, choice) for choice in choices]
    return [path]


def _generic(handler: Any) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    return {"summary": doc.split("\n", 1)[0], "responses": {"default": {"description": "see the README"}}}


def build_spec(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3 document of ``app`` as a dict."""
    spec = APISpec(title="realtime", version="1", openapi_version="3.0.3", plugins=[MarshmallowPlugin()])
    for name, schema in _COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "Authorization",
                                               "description": "`Api-Key <key>`"})  # fmt: skip
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.security_scheme("session", {"type": "apiKey", "in": "cookie", "name": "realtime_session"})
    spec.components.response("Error", _envelope(None, 400, "an error: success false, errorCode, message")["400"])
    spec.components.response("PlainError", _PLAIN_ERROR)
    for path, operations in sorted(_paths(app).items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3 description of every route."""
    cache = request.app[SPEC]
    if "spec" not in cache:
        cache["spec"] = build_spec(request.app)  # routes are final once the app serves
    return json_response(cache["spec"])


#: Scripts, styles, images and requests from this server only. Styles may also be inline:
#: Swagger UI (React) sets ``style`` attributes.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Swagger UI's files served next to the page: name -> content type.
SWAGGER_UI_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


def swagger_ui_dir() -> Path:
    """The directory of Swagger UI's files in the ``swagger-ui-py`` package.

    Found without importing the package (its framework glue imports jinja2 and PyYAML,
    which we do not need).

    Raises:
        RuntimeError: ``swagger-ui-py`` is not installed.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the API docs need the swagger-ui-py package: pip install 'swagger-ui-py>=25.7.1,<26'")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def setup_docs(app: web.Application, prefix: str) -> None:
    """Add the docs page ``{prefix}/api-docs`` and its three assets under ``{prefix}/api-docs/``.

    Raises:
        RuntimeError: ``swagger-ui-py`` is not installed.
    """
    static = files("http_api").joinpath("static")
    page = static.joinpath("api-docs.html").read_bytes()
    start = static.joinpath("api-docs.js").read_bytes()
    swagger = swagger_ui_dir()

    async def api_docs(request: web.Request) -> web.Response:
        """A browsable page for the OpenAPI description (Swagger UI, served by this server)."""
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=_docs_headers())

    async def api_docs_js(request: web.Request) -> web.Response:
        """The script that starts Swagger UI on the docs page."""
        return web.Response(body=start, content_type="text/javascript", charset="utf-8", headers=_docs_headers())

    app.router.add_get(f"{prefix}/api-docs", api_docs)
    app.router.add_get(f"{prefix}/api-docs/api-docs.js", api_docs_js)
    for name, content_type in SWAGGER_UI_FILES.items():
        app.router.add_get(f"{prefix}/api-docs/{name}", _file_handler(swagger / name, content_type))


def _docs_headers() -> dict[str, str]:
    return {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}


def _file_handler(path: Path, content_type: str) -> Handler:
    if not path.is_file():
        raise RuntimeError(f"swagger-ui-py has no {path.name} (at {path}): reinstall it")

    async def swagger_ui_file(request: web.Request) -> web.FileResponse:
        """A file of Swagger UI (from the swagger-ui-py package), for the docs page."""
        return web.FileResponse(path, headers={"Content-Type": content_type, **_docs_headers()})

    return swagger_ui_file
