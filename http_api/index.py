"""``GET /``: a small static page linking to the console, the API docs and the health checks.

So a person who opens the server's address in a browser finds their way instead of a bare
404. Package data (``http_api/static/index.html``), no data of its own, nothing loaded from
elsewhere; served without credentials under a Content-Security-Policy that allows only our
own stylesheet.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

INDEX_CSP = (
    "default-src 'none'; style-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def setup_index(app: web.Application) -> None:
    """Add ``GET /`` to ``app``."""
    body = files("http_api").joinpath("static", "index.html").read_bytes()

    async def index(request: web.Request) -> web.Response:
        """The index page: links to the console, the API docs and the health checks."""
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": INDEX_CSP, "Cache-Control": "no-cache"},
        )

    app.router.add_get("/", index)
