"""The wire protocol (Twitch PubSub), as a state machine that does no I/O.

One :class:`Session` per WebSocket connection. The adapter feeds it each inbound text
frame with :meth:`Session.receive` and sends back the bytes it returns; the session
changes the topic index only through its :class:`Owner` (``listen``/``unlisten``).
Nothing here awaits, so it is tested without sockets.

Client -> server (text frames of JSON)::

    {"type": "PING"}
    {"type": "LISTEN",   "nonce": "n1", "data": {"topics": ["..."], "auth_token": "...",
                                                  "since": {"<topic>": {"offset": 41, "epoch": "..."}},
                                                  "client_info": {"device": "living room"}}}
    {"type": "UNLISTEN", "nonce": "n2", "data": {"topics": ["..."]}}
    {"type": "PRESENCE", "nonce": "n3", "data": {"topic": "...", "auth_token": "..."}}

Server -> client::

    {"type": "PONG"}
    {"type": "RESPONSE", "nonce": "n1", "error": ""}            success
    {"type": "RESPONSE", "nonce": "n1", "error": "ERR_BADAUTH", "error_description": "..."}
    {"type": "RESPONSE", "nonce": "n3", "error": "", "data": {"connections": 2, "users": 1, "clients": [...]}}
    {"type": "MESSAGE", "data": {"topic": "...", "message": "<string>"}}
    {"type": "MESSAGE", "data": {"topic": "...", "message": "<string>", "offset": 42, "epoch": "..."}}
    {"type": "GAP", "data": {"topics": ["..."], "reason": "broker_reconnected" | "history_lost"}}
    {"type": "RECONNECT"}
    {"type": "AUTH_REVOKED", "data": {"topics": ["..."]}}
    {"type": "JOIN" | "LEAVE", "data": {"topic": "...", "user": "..." | null, "client": "...", "info": {...}}}

Error codes: ``ERR_BADMESSAGE`` (not JSON, wrong shape, unknown type), ``ERR_BADAUTH``
(token missing where needed, invalid, expired, revoked, lacking scope or target),
``ERR_BADTOPIC`` (malformed, not in the policy, or over the per-connection topic
limit), ``ERR_RATELIMIT`` (LISTEN/UNLISTEN too fast, too many connections for this
user, or too many token checks: see :mod:`realtime.verification`), ``ERR_SERVER`` (our
fault). A LISTEN is all-or-nothing.

``offset`` and ``epoch`` come on topics that keep history; ``since`` asks to resume after a
position (what is sent then is :mod:`realtime.recovery`'s business: the session only checks
its shape and hands each new topic's position to its owner). ``client_info`` and PRESENCE
belong to topics whose rule keeps presence (:mod:`realtime.presence`): the session checks
them and who may ask; the owner reads and answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from keys import Grant, InvalidToken
from realtime.history import MAX_EPOCH_LENGTH, MAX_OFFSET, Position
from realtime.limits import TokenBucket
from realtime.presence import PRESENCE_SCOPE, BadClientInfo, check_client_info
from realtime.verification import TooManyChecks
from topics import BadTopic, ParsedTopic, Topic, TopicPolicy, TopicRule

ERR_BADMESSAGE = "ERR_BADMESSAGE"
ERR_BADAUTH = "ERR_BADAUTH"
ERR_BADTOPIC = "ERR_BADTOPIC"
ERR_SERVER = "ERR_SERVER"
ERR_RATELIMIT = "ERR_RATELIMIT"
MAX_NONCE_LENGTH = 256

PONG = orjson.dumps({"type": "PONG"})
RECONNECT = orjson.dumps({"type": "RECONNECT"})


class Refused(Exception):
    """A request answered with an error RESPONSE; the connection stays open."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def response(nonce: str, error: str = "", description: str = "") -> bytes:
    """Encode a RESPONSE frame payload."""
    body: dict[str, str] = {"type": "RESPONSE", "nonce": nonce, "error": error}
    if description:
        body["error_description"] = description
    return orjson.dumps(body)


def data_response(nonce: str, data: Any) -> bytes:
    """Encode a successful RESPONSE that carries ``data`` (PRESENCE)."""
    return orjson.dumps({"type": "RESPONSE", "nonce": nonce, "error": "", "data": data})


def presence_event_payload(topic: str, kind: str, entry: dict[str, Any]) -> bytes:
    """Encode a JOIN or LEAVE frame payload (``entry``: ``{"user", "client", "info"}``)."""
    return orjson.dumps({"type": kind, "data": {"topic": topic, **entry}})


def message_payload(topic: str, message: str, offset: int = 0, epoch: str = "") -> bytes:
    """Encode a MESSAGE frame payload, once per publication; ``offset`` and ``epoch`` (a
    topic with history) go into ``data`` beside the Twitch fields."""
    if offset:
        data = {"topic": topic, "message": message, "offset": offset, "epoch": epoch}
        return orjson.dumps({"type": "MESSAGE", "data": data})
    return orjson.dumps({"type": "MESSAGE", "data": {"topic": topic, "message": message}})


def auth_revoked_payload(topics: list[str]) -> bytes:
    """Encode an AUTH_REVOKED frame payload."""
    return orjson.dumps({"type": "AUTH_REVOKED", "data": {"topics": topics}})


GAP_BROKER_RECONNECTED = "broker_reconnected"
"""GAP reason: the instance's broker link was down; topics without history may have lost
publications."""
GAP_HISTORY_LOST = "history_lost"
"""GAP reason: history could not cover the hole (another epoch, an offset fallen out of
history or ahead of it, a topic without history); the stream goes on live from here."""


def gap_payload(topics: Sequence[str], reason: str = GAP_BROKER_RECONNECTED) -> bytes:
    """Encode a GAP notice: publications on these topics may have been missed (``reason``:
    :data:`GAP_BROKER_RECONNECTED` or :data:`GAP_HISTORY_LOST`)."""
    return orjson.dumps({"type": "GAP", "data": {"topics": list(topics), "reason": reason}})


def _since_of(data: dict[str, Any], topics: dict[Topic, TopicRule]) -> dict[str, Position]:
    """LISTEN's ``data.since``: topic -> the position to resume from (empty when absent).

    Raises:
        Refused: ``ERR_BADMESSAGE`` when it is not an object of ``{"offset": int >= 0,
            "epoch": str}`` for topics of this LISTEN.
    """
    raw = data.get("since")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Refused(ERR_BADMESSAGE, 'data.since must be an object: {"<topic>": {"offset": <int>, "epoch": "<str>"}}')
    since: dict[str, Position] = {}
    for topic, position in raw.items():
        if topic not in topics:
            raise Refused(ERR_BADMESSAGE, f"data.since names {topic[:140]!r}, which is not in data.topics")
        offset = position.get("offset") if isinstance(position, dict) else None
        epoch = position.get("epoch") if isinstance(position, dict) else None
        if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
            raise Refused(ERR_BADMESSAGE, f"data.since[{topic!r}].offset must be an integer from 0 to {MAX_OFFSET}")
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH:
            raise Refused(
                ERR_BADMESSAGE, f"data.since[{topic!r}].epoch must be a string of at most {MAX_EPOCH_LENGTH} characters"
            )
        since[topic] = Position(offset, epoch)
    return since


class Listen(NamedTuple):
    """One topic a LISTEN added: its policy rule, the position to resume from (``since``),
    and, for presence, the LISTEN's token ``sub`` and ``client_info``."""

    topic: Topic
    rule: TopicRule
    since: Position | None
    user: str | None = None
    info: dict[str, Any] | None = None


class Owner(Protocol):
    """What sessions need from the instance that holds them (the node), as one object that
    every session shares. Each call names the connection it is about (``key``), so a session
    holds no callbacks of its own (per-connection closures and bound methods were 13 of the
    objects the garbage collector tracked for each LISTENing connection)."""

    def verify(self, key: Any, token: str) -> Grant:
        """``key``'s token -> grant; raises :class:`keys.InvalidToken`, or its subclass
        :class:`realtime.verification.TooManyChecks` when the token was not checked."""
        ...

    def listen(self, key: Any, topics: list[Listen], reply: bytes) -> bool:
        """Called once per successful LISTEN with the topics ``key``'s session newly listens
        to (their rules and the positions the client asked to resume from) and the
        RESPONSE. Returns ``True`` if the RESPONSE may go now; ``False`` when the owner took
        it, to send once it receives every one of those topics (nothing published after the
        RESPONSE may be missed)."""
        ...

    def unlisten(self, key: Any, topic: Topic) -> None:
        """Called once for each topic ``key``'s session drops."""
        ...

    def renew(self, key: Any, topics: list[Listen]) -> None:
        """Called when a LISTEN names topics with presence that ``key``'s session listens to
        already (e.g. a token refresh): their presence entries take its user and
        ``client_info``."""
        ...

    def presence_request(self, key: Any, nonce: str, topic: Topic, rule: TopicRule) -> None:
        """A PRESENCE ``key`` may ask (checked): read ``topic``'s presence and send the
        RESPONSE (:func:`data_response`, or an error RESPONSE) to ``key`` later."""
        ...

    def admit_sub(self, key: Any, sub: str) -> bool:
        """Asked once per new token ``sub`` on a connection; ``False`` refuses the LISTEN
        (too many connections for that user)."""
        ...

    def released(self, key: Any, sub: str) -> None:
        """Told when ``key``'s session no longer holds any topic granted to ``sub`` (after
        UNLISTEN, expiry or revocation): the slot :meth:`admit_sub` gave is free again."""
        ...

    def granted(self, key: Any, grant: Grant) -> None:
        """Told of every accepted grant (its topics expire with it: for the timer)."""
        ...

    def refused(self, code: str) -> None:
        """Told the error code of every error RESPONSE (for metrics)."""
        ...


class Session:
    """Protocol state of one connection.

    The connection's life (open, closing, closed) is not kept here but in
    :class:`realtime.wsconn.WsConnection`, which hands the session frames only while open.

    Attributes:
        listening: ``True`` once a LISTEN succeeded (the idle timeout applies instead of
            the listen timeout).
        topics: topic -> the grant (token) that allowed it, or ``None`` for a public
            topic (public topics never expire).
        sub: the ``sub`` of the last token accepted, if any.
    """

    __slots__ = ("_key", "_max_topics", "_owner", "_policy", "_rate", "listening", "sub", "topics")

    def __init__(
        self,
        *,
        policy: TopicPolicy,
        owner: Owner,
        key: Any,
        max_topics: int = 50,
        rate: TokenBucket | None = None,
    ) -> None:
        """Args:
        policy: the topic policy.
        owner: verifies tokens, keeps the topic index and the per-user limits.
        key: what this session is to ``owner`` (the node's :class:`realtime.send_queue.SendQueue`).
        max_topics: most topics one connection may hold.
        rate: LISTEN/UNLISTEN rate limit (``None``: unlimited).
        """
        self._policy = policy
        self._owner = owner
        self._key = key
        self._max_topics = max_topics
        self._rate = rate
        self.listening = False
        self.topics: dict[Topic, Grant | None] = {}
        self.sub: str | None = None

    def receive(self, text: str | bytes) -> bytes:
        """Handle one inbound text frame and return the reply payload (JSON bytes), or
        ``b""`` when the owner will send it later (a LISTEN waiting for the broker to
        receive its topics: :meth:`Owner.listen`; a PRESENCE: :meth:`Owner.presence_request`).

        Never raises for anything a client sends: a bad frame yields an
        ``ERR_BADMESSAGE`` RESPONSE; an unexpected failure yields ``ERR_SERVER``.
        """
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._refuse("", ERR_BADMESSAGE, "frame is not valid JSON")
        if not isinstance(request, dict):
            return self._refuse("", ERR_BADMESSAGE, "frame must be a JSON object")
        kind = request.get("type")
        if kind == "PING":
            return PONG
        nonce = request.get("nonce", "")
        if not isinstance(nonce, str) or len(nonce) > MAX_NONCE_LENGTH:
            return self._refuse("", ERR_BADMESSAGE, f"nonce must be a string of at most {MAX_NONCE_LENGTH} characters")
        if kind in ("LISTEN", "UNLISTEN", "PRESENCE") and self._rate is not None and not self._rate.take():
            return self._refuse(nonce, ERR_RATELIMIT, f"too many {kind} requests; slow down")
        try:
            return self._handle(kind, request, nonce)
        except Refused as exc:
            return self._refuse(nonce, exc.code, exc.description)
        except Exception:  # noqa: BLE001 - the adapter logs; the client gets ERR_SERVER
            return self._refuse(nonce, ERR_SERVER, "internal error")

    def _handle(self, kind: object, request: dict[str, Any], nonce: str) -> bytes:
        """LISTEN, UNLISTEN or PRESENCE -> the reply (``b""``: the owner sends it later).

        Raises:
            Refused: the error RESPONSE to send.
        """
        if kind == "LISTEN":
            added = self._do_listen(request)
            reply = response(nonce)
            return reply if not added or self._owner.listen(self._key, added, reply) else b""
        if kind == "UNLISTEN":
            self._do_unlisten(request)
            return response(nonce)
        if kind == "PRESENCE":
            self._do_presence(request, nonce)
            return b""
        raise Refused(ERR_BADMESSAGE, "type must be PING, LISTEN, UNLISTEN or PRESENCE")

    def receive_binary(self) -> bytes:
        """Answer a binary frame: the protocol is JSON text frames only."""
        return self._refuse("", ERR_BADMESSAGE, "binary frames are not supported; send JSON text frames")

    def _refuse(self, nonce: str, code: str, description: str) -> bytes:
        self._owner.refused(code)
        return response(nonce, code, description)

    def close(self) -> list[Topic]:
        """Unlisten everything (the connection is gone); returns the dropped topics."""
        dropped = list(self.topics)
        owner, key = self._owner, self._key
        for topic in dropped:
            owner.unlisten(key, topic)
        self.topics.clear()
        return dropped

    def expire(self, now: float) -> list[Topic]:
        """Drop topics whose granting token expired at or before ``now``.

        Returns:
            The dropped topics (send them in AUTH_REVOKED).
        """
        return self.revoke(lambda grant: grant.exp <= now)

    def revoke(self, predicate: Callable[[Grant], bool]) -> list[Topic]:
        """Drop the topics whose granting token matches ``predicate``; returns them."""
        dropped = [t for t, grant in self.topics.items() if grant is not None and predicate(grant)]
        self._drop(dropped)
        return dropped

    def next_expiry(self) -> float | None:
        """The earliest expiry among held grants (seconds since the epoch), or ``None``."""
        return min((g.exp for g in self.topics.values() if g is not None), default=None)

    def _drop(self, topics: list[Topic]) -> None:
        owner, key, held = self._owner, self._key, self.topics
        subs = {grant.sub for topic in topics if (grant := held[topic]) is not None}
        for topic in topics:
            del held[topic]
            owner.unlisten(key, topic)
        if subs:
            subs.difference_update(grant.sub for grant in held.values() if grant is not None)
            for sub in subs:
                owner.released(key, sub)

    def _topics_of(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        data = request.get("data")
        if not isinstance(data, dict):
            raise Refused(ERR_BADMESSAGE, "data must be an object")
        topics = data.get("topics")
        if not isinstance(topics, list) or not topics:
            raise Refused(ERR_BADMESSAGE, "data.topics must be a non-empty array")
        if len(topics) > self._max_topics:
            raise Refused(ERR_BADTOPIC, f"at most {self._max_topics} topics per connection")
        return data, topics

    def _do_listen(self, request: dict[str, Any]) -> list[Listen]:  # noqa: C901 - LISTEN's checks in the spec's order
        data, raw_topics = self._topics_of(request)
        checked = []
        for raw in raw_topics:
            try:
                checked.append(self._policy.check(raw))
            except BadTopic as exc:
                raise Refused(ERR_BADTOPIC, str(exc)) from None
        rules = {parsed.topic: rule for parsed, rule in checked}
        since = _since_of(data, rules)
        info = data.get("client_info")
        if info is not None:
            try:
                info = check_client_info(info)
            except BadClientInfo as exc:
                raise Refused(ERR_BADMESSAGE, str(exc)) from None
        grant = self._grant_of(data)
        granted: dict[Topic, Grant | None] = {}
        for parsed, rule in checked:
            needs_token = self._check_access(parsed, rule, grant)
            # a public topic with presence LISTENed with a token shows its user: the topic
            # then lives as long as the token, or a revoked user would stay present
            granted[parsed.topic] = grant if needs_token or rule.presence else None
        new = [t for t in granted if t not in self.topics]
        if len(self.topics) + len(new) > self._max_topics:
            raise Refused(ERR_BADTOPIC, f"at most {self._max_topics} topics per connection")
        owner, key = self._owner, self._key
        holds_grant = grant is not None and any(g is grant for g in granted.values())
        if grant is not None and holds_grant:
            if not owner.admit_sub(key, grant.sub):
                raise Refused(ERR_RATELIMIT, "too many connections for this user")
            self.sub = grant.sub
        held = self.topics
        # a re-LISTEN may move a topic to another user's token (or to none): the user whose
        # token no longer holds any topic here frees its slot
        replaced = {g.sub for t in granted if t in held and (g := held[t]) is not None}
        held.update(granted)
        if replaced:
            replaced.difference_update(g.sub for g in held.values() if g is not None)
            for sub in replaced:
                owner.released(key, sub)
        if grant is not None and holds_grant:
            owner.granted(key, grant)
        self.listening = True
        user = None if grant is None else grant.sub
        renewed = [Listen(t, rules[t], None, user, info) for t in granted if t not in new and rules[t].presence]
        if renewed:  # listened to already: its presence entry takes this LISTEN's user and info
            owner.renew(key, renewed)
        return [Listen(topic, rules[topic], since.get(topic), user, info) for topic in new]

    def _grant_of(self, data: dict[str, Any]) -> Grant | None:
        """The grant of ``data.auth_token`` (``None`` without one).

        Raises:
            Refused: not a string (``ERR_BADMESSAGE``), too many checks (``ERR_RATELIMIT``),
                invalid (``ERR_BADAUTH``).
        """
        token = data.get("auth_token")
        if token is not None and not isinstance(token, str):
            raise Refused(ERR_BADMESSAGE, "data.auth_token must be a string")
        if token is None or token == "":
            return None
        try:
            return self._owner.verify(self._key, token)
        except TooManyChecks as exc:
            raise Refused(ERR_RATELIMIT, str(exc)) from None
        except InvalidToken as exc:
            raise Refused(ERR_BADAUTH, str(exc)) from None

    @staticmethod
    def _check_access(parsed: ParsedTopic, rule: TopicRule, grant: Grant | None) -> bool:
        """Whether ``grant`` may LISTEN to ``parsed`` (its scope, and ``self`` targets);
        returns ``True`` when the topic needs a token at all.

        Raises:
            Refused: ``ERR_BADAUTH``, naming what is missing.
        """
        needs_token = rule.scope is not None or rule.target == "self"
        if needs_token and grant is None:
            raise Refused(ERR_BADAUTH, f"topic {parsed.topic} needs an auth_token")
        if rule.scope is not None and grant is not None and rule.scope not in grant.scopes:
            raise Refused(ERR_BADAUTH, f"topic {parsed.topic} needs scope {rule.scope}")
        if rule.target == "self" and grant is not None and parsed.target != grant.sub:
            raise Refused(ERR_BADAUTH, f"topic {parsed.topic} is not yours")
        return needs_token

    def _do_presence(self, request: dict[str, Any], nonce: str) -> None:
        """Check a PRESENCE (shape, topic, access) and hand it to the owner.

        Raises:
            Refused: ``ERR_BADMESSAGE``, ``ERR_BADTOPIC`` (unknown topic, or one that keeps
                no presence), ``ERR_BADAUTH`` (neither ``realtime:presence`` nor allowed to
                LISTEN), ``ERR_RATELIMIT``.
        """
        data = request.get("data")
        if not isinstance(data, dict):
            raise Refused(ERR_BADMESSAGE, "data must be an object")
        try:
            parsed, rule = self._policy.check(data.get("topic"))
        except BadTopic as exc:
            raise Refused(ERR_BADTOPIC, f"data.topic: {exc}") from None
        if not rule.presence:
            raise Refused(ERR_BADTOPIC, f"topic {parsed.topic} keeps no presence (its rule's presence is off)")
        grant = self._grant_of(data)
        if grant is None or PRESENCE_SCOPE not in grant.scopes:
            self._check_access(parsed, rule, grant)
        self._owner.presence_request(self._key, nonce, parsed.topic, rule)

    def _do_unlisten(self, request: dict[str, Any]) -> None:
        _, raw_topics = self._topics_of(request)
        parsed = []
        for raw in raw_topics:
            try:
                parsed.append(self._policy.check(raw)[0].topic)
            except BadTopic as exc:
                raise Refused(ERR_BADTOPIC, str(exc)) from None
        self._drop([t for t in dict.fromkeys(parsed) if t in self.topics])
