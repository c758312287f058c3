"""Unit tests of the protocol state machine: no sockets, a plain set as the topic index."""

from __future__ import annotations

import time

import orjson
import pytest

from keys import Grant, KeyStore, TokenIssuer, TokenVerifier
from realtime.history import Position
from realtime.protocol import Listen, Session
from topics import DEFAULT_POLICY, Topic


class SetOwner:
    """A session's owner (:class:`realtime.protocol.Owner`) with a plain set as the topic index."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        self.index: set[Topic] = set()
        self.listens: list[Topic] = []
        self.refusals: list[str] = []
        self.admit = True
        self.events: list[str] = []  # listen/granted calls, in order
        self.since: dict[Topic, Position | None] = {}
        self.hold = False  # take the RESPONSE to send later (the broker does not receive yet)
        self.held: list[bytes] = []

    def verify(self, key: object, token: str) -> Grant:
        assert key == "conn-1"
        return self.verifier.verify(token)

    def listen(self, key: object, topics: list[Listen], reply: bytes) -> bool:
        assert key == "conn-1"
        for topic, rule, since, *_ in topics:
            assert rule.name == topic.partition(".")[0]
            self.since[topic] = since
            self.listens.append(topic)
            self.events.append(f"listen {topic}")
            self.index.add(topic)
        if self.hold:
            self.held.append(reply)
            return False
        return True

    def unlisten(self, key: object, topic: Topic) -> None:
        assert key == "conn-1"
        self.index.discard(topic)

    def renew(self, key: object, topics: list[Listen]) -> None:
        self.events.extend(f"renew {item.topic} {item.user}" for item in topics)

    def presence_request(self, key: object, nonce: str, topic: Topic, rule: object) -> None:
        self.events.append(f"presence {nonce} {topic}")

    def admit_sub(self, key: object, sub: str) -> bool:
        return self.admit

    def granted(self, key: object, grant: Grant) -> None:
        self.events.append(f"granted {grant.sub}")

    def released(self, key: object, sub: str) -> None:
        self.events.append(f"released {sub}")

    def refused(self, code: str) -> None:
        self.refusals.append(code)


class Harness:
    def __init__(self, store: KeyStore, max_topics: int = 50) -> None:
        self.issuer = TokenIssuer(store, issuer="realtime", audience="realtime", ttl=60)
        self.owner = SetOwner(TokenVerifier(store, issuer="realtime", audience="realtime"))
        self.index = self.owner.index
        self.session = Session(policy=DEFAULT_POLICY, owner=self.owner, key="conn-1", max_topics=max_topics)

    def token(self, sub: str = "7", scopes: tuple[str, ...] = ("user:read:remote-control",)) -> str:
        return self.issuer.issue(sub, scopes).token

    def send(self, frame: object) -> dict[str, object]:
        raw = frame if isinstance(frame, str | bytes) else orjson.dumps(frame)
        reply: dict[str, object] = orjson.loads(self.session.receive(raw))
        return reply

    def listen(self, topics: list[object], token: str | None = None, kind: str = "LISTEN") -> dict[str, object]:
        data: dict[str, object] = {"topics": topics}
        if token is not None:
            data["auth_token"] = token
        return self.send({"type": kind, "nonce": "n1", "data": data})


@pytest.fixture
def h(key_store: KeyStore) -> Harness:
    return Harness(key_store)


def test_ping_pong(h: Harness) -> None:
    assert h.send({"type": "PING"}) == {"type": "PONG"}
    assert not h.session.listening  # a PING is not a LISTEN


def test_listen_public_topic_without_token(h: Harness) -> None:
    assert h.listen(["dream:update.abc"]) == {"type": "RESPONSE", "nonce": "n1", "error": ""}
    assert h.index == {"dream:update.abc"}
    assert h.session.listening
    assert h.session.topics == {"dream:update.abc": None}


def test_listen_scoped_self_topic(h: Harness) -> None:
    reply = h.listen(["remote-control:command.7", "dream:update.x"], h.token())
    assert reply["error"] == ""
    assert h.index == {"remote-control:command.7", "dream:update.x"}
    assert h.session.sub == "7"
    grant = h.session.topics[Topic("remote-control:command.7")]
    assert grant is not None and grant.exp > time.time() and grant.sub == "7"
    assert h.session.topics[Topic("dream:update.x")] is None  # public: never expires


@pytest.mark.parametrize(
    ("topics", "token_args", "error"),
    [
        (["remote-control:command.7"], None, "ERR_BADAUTH"),  # token missing
        (["remote-control:command.8"], ("7",), "ERR_BADAUTH"),  # someone else's self topic
        (["channel:follow.1"], ("7",), "ERR_BADAUTH"),  # scope missing
        (["nope:nope.1"], None, "ERR_BADTOPIC"),
        (["dream:update"], None, "ERR_BADTOPIC"),  # target required
        (["system:notice.1"], None, "ERR_BADTOPIC"),  # global: no target
        (["DREAM:update.1"], None, "ERR_BADTOPIC"),
        ([42], None, "ERR_BADTOPIC"),
    ],
)
def test_listen_refusals(h: Harness, topics: list[object], token_args: tuple[str] | None, error: str) -> None:
    token = None if token_args is None else h.token(*token_args)
    reply = h.listen(topics, token)
    assert reply["error"] == error and reply["nonce"] == "n1"
    assert isinstance(reply["error_description"], str) and reply["error_description"]
    assert h.index == set() and not h.session.listening


def test_scope_prefix_and_superset_do_not_match(h: Harness) -> None:
    for scopes in (("user:read",), ("user:read:remote-control-all",), ("user:read:remote",), ("user:*",)):
        token = h.token("7", scopes)
        assert h.listen(["remote-control:command.7"], token)["error"] == "ERR_BADAUTH", scopes


def test_listen_is_all_or_nothing(h: Harness) -> None:
    reply = h.listen(["dream:update.a", "remote-control:command.8"], h.token())
    assert reply["error"] == "ERR_BADAUTH"
    assert h.index == set()


def test_invalid_token_refused_even_for_public_topics(h: Harness) -> None:
    assert h.listen(["dream:update.a"], "not-a-token")["error"] == "ERR_BADAUTH"


def test_unlisten(h: Harness) -> None:
    h.listen(["dream:update.a", "dream:update.b"])
    assert h.listen(["dream:update.a", "dream:update.zzz"], kind="UNLISTEN")["error"] == ""
    assert h.index == {"dream:update.b"}
    assert h.listen(["bad topic"], kind="UNLISTEN")["error"] == "ERR_BADTOPIC"


def test_relisten_does_not_double_index(h: Harness) -> None:
    h.listen(["dream:update.a"])
    h.listen(["dream:update.a", "dream:update.a"])
    assert h.owner.listens == ["dream:update.a"]


def test_topic_limit(key_store: KeyStore) -> None:
    h = Harness(key_store, max_topics=3)
    assert h.listen([f"dream:update.{i}" for i in range(3)])["error"] == ""
    reply = h.listen(["dream:update.x"])
    assert reply["error"] == "ERR_BADTOPIC" and "at most 3" in str(reply["error_description"])
    assert h.listen([f"dream:update.{i}" for i in range(4)])["error"] == "ERR_BADTOPIC"
    assert len(h.index) == 3


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\xff\xfe",
        "[]",
        '"LISTEN"',
        "null",
        "{}",
        '{"type": "SUBSCRIBE"}',
        '{"type": 5}',
        '{"type": "LISTEN"}',
        '{"type": "LISTEN", "data": []}',
        '{"type": "LISTEN", "data": {"topics": "dream:update.1"}}',
        '{"type": "LISTEN", "data": {"topics": []}}',
        '{"type": "LISTEN", "nonce": 5, "data": {"topics": ["dream:update.1"]}}',
        "[" * 5000 + "]" * 5000,
        '{"type": "LISTEN", "nonce": "' + "n" * 300 + '", "data": {"topics": ["dream:update.1"]}}',
    ],
)
def test_bad_messages(h: Harness, frame: str | bytes) -> None:
    reply = h.send(frame)
    assert reply["type"] == "RESPONSE" and reply["error"] == "ERR_BADMESSAGE"


def test_nonce_is_echoed_on_errors(h: Harness) -> None:
    reply = h.send({"type": "LISTEN", "nonce": "abc", "data": None})
    assert reply == {
        "type": "RESPONSE",
        "nonce": "abc",
        "error": "ERR_BADMESSAGE",
        "error_description": "data must be an object",
    }


def test_verifier_crash_is_err_server(key_store: KeyStore) -> None:
    def boom(token: str) -> object:
        raise RuntimeError("bug")

    h = Harness(key_store)
    h.owner.verify = boom  # type: ignore[assignment,method-assign]
    assert h.listen(["dream:update.a"], "tok")["error"] == "ERR_SERVER"
    assert h.owner.refusals == ["ERR_SERVER"]


def test_expire_and_close(h: Harness) -> None:
    h.listen(["remote-control:command.7", "dream:update.a"], h.token())
    assert h.session.expire(time.time()) == []
    assert h.session.expire(time.time() + 3600) == ["remote-control:command.7"]
    assert h.index == {"dream:update.a"}
    assert h.session.close() == ["dream:update.a"]
    assert h.index == set() and h.session.topics == {}


def test_owner_is_told_in_order_and_a_refused_user_gets_nothing(h: Harness) -> None:
    h.owner.admit = False  # this user already LISTENs on too many connections
    assert h.listen(["remote-control:command.7"], h.token())["error"] == "ERR_RATELIMIT"
    assert h.index == set() and h.owner.events == [] and h.session.topics == {}
    h.owner.admit = True
    assert h.listen(["remote-control:command.7", "dream:update.a"], h.token())["error"] == ""
    assert h.owner.events == ["granted 7", "listen remote-control:command.7", "listen dream:update.a"]
    assert h.owner.refusals == ["ERR_RATELIMIT"]


def test_a_relisten_with_another_users_token_frees_the_first_users_slot(h: Harness) -> None:
    """A topic moved to user 8's token by a re-LISTEN: user 7's token holds nothing here any
    more, so 7's slot (MAX_CONNECTIONS_PER_USER) is freed, not kept until the socket closes."""
    scopes = ("moderator:read:followers",)
    assert h.listen(["channel:follow.42"], h.token("7", scopes))["error"] == ""
    assert h.listen(["channel:follow.42"], h.token("8", scopes))["error"] == ""
    assert "released 7" in h.owner.events and "released 8" not in h.owner.events
    grant = h.session.topics[Topic("channel:follow.42")]
    assert grant is not None and grant.sub == "8"


def listen_since(h: Harness, topics: list[str], since: object) -> dict[str, object]:
    return h.send({"type": "LISTEN", "nonce": "n1", "data": {"topics": topics, "since": since}})


def test_listen_since_hands_each_topic_its_position(h: Harness) -> None:
    since = {"dream:update.a": {"offset": 4, "epoch": "e1"}}
    assert listen_since(h, ["dream:update.a", "dream:update.b"], since)["error"] == ""
    assert h.owner.since == {"dream:update.a": Position(4, "e1"), "dream:update.b": None}


@pytest.mark.parametrize(
    "since",
    [
        [],
        "x",
        {"dream:update.other": {"offset": 1, "epoch": "e"}},
        {"dream:update.a": 5},
        {"dream:update.a": {"offset": -1, "epoch": "e"}},
        {"dream:update.a": {"offset": 2**53, "epoch": "e"}},
        {"dream:update.a": {"offset": 1.5, "epoch": "e"}},
        {"dream:update.a": {"offset": True, "epoch": "e"}},
        {"dream:update.a": {"offset": "1", "epoch": "e"}},
        {"dream:update.a": {"offset": 1}},
        {"dream:update.a": {"offset": 1, "epoch": 7}},
        {"dream:update.a": {"offset": 1, "epoch": "e" * 10_000}},
    ],
)
def test_a_bad_since_is_refused_and_listens_to_nothing(h: Harness, since: object) -> None:
    reply = listen_since(h, ["dream:update.a"], since)
    assert reply["error"] == "ERR_BADMESSAGE"
    assert "since" in str(reply["error_description"])
    assert len(str(reply["error_description"])) < 300
    assert h.index == set()


def test_since_for_many_topics_is_bounded_by_the_topic_limit(key_store: KeyStore) -> None:
    h = Harness(key_store, max_topics=50)
    topics = [f"dream:update.t{i}" for i in range(51)]
    since = {t: {"offset": 1, "epoch": "e"} for t in topics}
    assert listen_since(h, topics, since)["error"] == "ERR_BADTOPIC"
    assert listen_since(h, topics[:50], dict(list(since.items())[:50]))["error"] == ""


def test_a_listen_the_owner_holds_is_answered_later(h: Harness) -> None:
    h.owner.hold = True
    assert h.session.receive(b'{"type":"LISTEN","nonce":"n1","data":{"topics":["dream:update.a"]}}') == b""
    assert orjson.loads(h.owner.held[0]) == {"type": "RESPONSE", "nonce": "n1", "error": ""}
    assert h.session.topics.keys() == {"dream:update.a"}
    h.owner.hold = False  # a LISTEN that adds nothing new is answered at once
    assert h.listen(["dream:update.a"])["error"] == ""
