"""Hostile input: fuzz the protocol core (hypothesis); no I/O. A real server over real sockets:
tests/integration/test_fuzz.py."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys import KeyStore, TokenVerifier
from realtime.protocol import Session
from tests.unit.test_protocol import SetOwner
from topics import DEFAULT_POLICY

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT
JSON = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(TEXT, kids, max_size=5), max_leaves=20
)
TOPICS = st.sampled_from(
    ["dream:update.a", "remote-control:command.7", "system:notice", "x" * 200, "a:b.c", "", "é:é.é"]
)
PROTOCOLISH = st.fixed_dictionaries(
    {"type": st.sampled_from(["PING", "LISTEN", "UNLISTEN", "MESSAGE", "", "listen"]) | JSON},
    optional={
        "nonce": JSON,
        "data": st.fixed_dictionaries(
            {}, optional={"topics": st.lists(TOPICS | JSON, max_size=60) | JSON, "auth_token": TEXT | JSON}
        )
        | JSON,
    },
)
FRAMES = (
    TEXT
    | st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v))
    | PROTOCOLISH.map(lambda v: json.dumps(v))
    | st.integers(1, 20_000).map(lambda n: "[" * n + "]" * n)
    | st.integers(1, 30_000).map(lambda n: '{"type":"LISTEN","nonce":"' + "n" * n + '"}')
)


@given(frame=FRAMES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_session_never_raises(key_store: KeyStore, frame: str | bytes) -> None:
    owner = SetOwner(TokenVerifier(key_store, issuer="realtime", audience="realtime"))
    session = Session(policy=DEFAULT_POLICY, owner=owner, key="conn-1", max_topics=50)
    reply = orjson.loads(session.receive(frame))
    assert reply["type"] in ("PONG", "RESPONSE")
    if reply["type"] == "RESPONSE":
        assert reply["error"] in ("", "ERR_BADMESSAGE", "ERR_BADAUTH", "ERR_BADTOPIC", "ERR_RATELIMIT")
    assert len(owner.index) <= 50
