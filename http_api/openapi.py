"""OpenAPI 3 description (``/api/v1/openapi.json``) and a docs page (``/api/v1/api-docs``).

Built with apispec from the marshmallow schemas, once, when first asked for. Every route
of the app is listed: the ones in :data:`OPERATIONS` in detail, any other with the first
line of its handler's docstring.
"""

from __future__ import annotations

import inspect
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from http_api import schemas as s
from http_api.auth import WsTokenRequest
from http_api.errors import json_response
from http_api.login import LoginRequest

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
    for path, operations in sorted(_paths(app).items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3 description of every route."""
    cache = request.app[SPEC]
    if "spec" not in cache:
        cache["spec"] = build_spec(request.app)  # routes are final once the app serves
    return json_response(cache["spec"])


_DOCS = """<!doctype html>
<html><head><meta charset="utf-8"><title>realtime API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="docs"></div>
<noscript>The OpenAPI description is at <a href="openapi.json">openapi.json</a>.</noscript>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#docs"});</script>
</body></html>
"""


async def api_docs(request: web.Request) -> web.Response:
    """A browsable page for the OpenAPI description (Swagger UI from a CDN)."""
    return web.Response(text=_DOCS, content_type="text/html")
