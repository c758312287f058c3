"""Typed application keys (``web.AppKey``) shared by the server and the HTTP handlers."""

from __future__ import annotations

from aiohttp import web

from keys import KeyStore, TokenIssuer, TokenVerifier
from realtime.limits import ConnectionLimiter
from realtime.node import Node
from realtime.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
NODE = web.AppKey("node", Node)
KEY_STORE = web.AppKey("key_store", KeyStore)
ISSUER = web.AppKey("token_issuer", TokenIssuer)
VERIFIER = web.AppKey("token_verifier", TokenVerifier)
LIMITER = web.AppKey("connection_limiter", ConnectionLimiter)
