"""Typed application keys (``web.AppKey``) shared by the app factory and the HTTP handlers.

They live here, above the engine and the data layer, so that neither imports aiohttp's web layer
for them."""

from __future__ import annotations

from aiohttp import web

from db import Database
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
DATABASE = web.AppKey("database", Database)
