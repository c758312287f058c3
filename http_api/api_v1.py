"""Routes of ``/api/v1`` (the e-dream compatible REST API)."""

from __future__ import annotations

from aiohttp import web

from http_api import dreams, login, openapi
from http_api.appkeys import DATABASE, SETTINGS
from http_api.availability import database_unavailable_middleware
from http_api.envelope import envelope_middleware
from http_api.login import LOGIN_LIMITS, LoginLimits
from http_api.remote_control import remote_control, remote_control_devices

PREFIX = "/api/v1"
_UUID = "{uuid:[0-9a-fA-F-]{36}}"


def setup_api_v1(app: web.Application) -> None:
    """Add the ``/api/v1`` routes: remote control always; dreams and the built-in login
    (``/auth/login``, ``/auth/logout``) only with a database."""
    app.middlewares.append(envelope_middleware)
    app.router.add_post(f"{PREFIX}/remote-control", remote_control)
    app.router.add_get(f"{PREFIX}/remote-control/devices", remote_control_devices)
    app[openapi.SPEC] = {}
    app.router.add_get(f"{PREFIX}/openapi.json", openapi.openapi_json)
    openapi.setup_docs(app, PREFIX)
    if DATABASE not in app:
        return
    app.middlewares.append(database_unavailable_middleware)
    limits = app[SETTINGS].limits
    app[LOGIN_LIMITS] = LoginLimits(
        attempts_per_account=limits.login_attempts_per_account,
        attempts_per_ip=limits.login_attempts_per_ip,
        window=limits.login_window,
    )
    app.router.add_post("/auth/login", login.login)
    app.router.add_post("/auth/logout", login.logout)
    app.router.add_get(f"{PREFIX}/dream", dreams.list_dreams)
    app.router.add_post(f"{PREFIX}/dream", dreams.create_dream)
    app.router.add_get(f"{PREFIX}/dream/my-dreams", dreams.my_dreams)
    app.router.add_get(f"{PREFIX}/dream/{_UUID}", dreams.get_dream)
    app.router.add_put(f"{PREFIX}/dream/{_UUID}", dreams.update_dream)
    app.router.add_delete(f"{PREFIX}/dream/{_UUID}", dreams.delete_dream)
    app.router.add_post(f"{PREFIX}/dream/{_UUID}/status/{{status:processing|processed|failed}}", dreams.set_status)
    app.router.add_put(f"{PREFIX}/dream/{_UUID}/{{vote:upvote|downvote|unvote}}", dreams.vote)
