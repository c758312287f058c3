"""The node: topic index + broker + the connected peers of this instance.

Fan-out path, per publication: look up the topic's local listeners; if there are any,
encode the MESSAGE frame once and queue the same bytes on every listener
(:meth:`realtime.connection.Connection.send`, which never awaits).

The node also ends grants: when the token behind a LISTEN expires, or is revoked on
any instance (a control message through the broker), the topics it granted are
dropped and the client receives ``AUTH_REVOKED``. Revocations are kept in a
:class:`realtime.revocations.RevocationTable`; what a token check may cost is bounded by
:mod:`realtime.verification`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import orjson
import structlog

from keys import Grant, InvalidToken
from realtime.broker import Broker
from realtime.connection import Connection, FlushScheduler, encode_text_frame
from realtime.disconnect import CloseCode
from realtime.errors import BadMessage
from realtime.hub import TopicIndex
from realtime.limits import TokenBucket
from realtime.protocol import Session, auth_revoked_payload, message_payload
from realtime.revocations import CLOCK_MARGIN, RevocationTable
from realtime.verification import BadTokens, TokenChecks, TooManyChecks
from topics import Topic, TopicPolicy

log = structlog.get_logger("realtime.node")
_VERIFIED_CACHE_SIZE = 4096
MAX_JTI_LENGTH = 64
MAX_SUB_LENGTH = 128


class Peer(Protocol):
    """One connected client as the node sees it (implemented by the WebSocket adapter)."""

    conn: Connection
    session: Session

    @property
    def address(self) -> str:
        """The client's address (for per-address budgets)."""
        ...

    def close_soon(self, code: int, reason: str) -> None:
        """Ask the adapter to close the WebSocket with ``code``."""
        ...


def message_text(message: object) -> str:
    """The wire form of a published message: a string as is, any other JSON value
    JSON-encoded (as Twitch PubSub sends ``data.message``).

    Raises:
        realtime.BadMessage: the value cannot be encoded.
    """
    if isinstance(message, str):
        return message
    try:
        return orjson.dumps(message).decode()
    except TypeError as exc:  # nested deeper than 255 levels, or not JSON at all
        raise BadMessage(f"message cannot be encoded as JSON: {exc}") from None


def revocation_message(*, jti: str | None = None, sub: str | None = None) -> dict[str, object]:
    """The control message that revokes WS tokens on every instance (see :meth:`Node.revoke`)."""
    return {"type": "revoke", "jti": jti, "sub": sub, "at": time.time()}


def gap_payload(topics: list[str]) -> bytes:
    """Encode a GAP notice: publications on these topics may have been missed."""
    return orjson.dumps({"type": "GAP", "data": {"topics": topics, "reason": "broker_reconnected"}})


class Node:
    """Everything one server instance shares between its connections.

    Attributes:
        index: topic -> local listeners.
        peers: every open connection of this instance.
        published: publications accepted by the broker through this node.
        delivered: frames queued to listeners by fan-out.
        gaps: broker reconnects announced to clients.
        revocations: revocation control messages applied.
        revoked: the revoked tokens this instance remembers.
        bad_tokens: tokens that failed verification lately (refused again without a check).
        checks: budgets of token checks per address and connection.
        slow_consumers: connections closed because their send queue overflowed.
        refusals: error code -> error RESPONSEs sent (ERR_BADAUTH, ERR_BADTOPIC, ...).
        handshakes: HTTP status -> WebSocket opening handshakes answered with it (101, 400,
            426, 429, 503), counted by the WebSocket adapter.
    """

    def __init__(
        self,
        *,
        broker: Broker,
        policy: TopicPolicy,
        verify: Callable[[str], Grant],
        max_connections_per_user: int = 0,
        token_ttl: float = 3600.0,
        write_interval: float = 0.0,
        checks: TokenChecks | None = None,
        revocations: RevocationTable | None = None,
    ) -> None:
        """Args:
        broker: the broker (memory or Redis).
        policy: the topic policy.
        verify: token verifier for LISTEN; raises :class:`keys.InvalidToken`.
        max_connections_per_user: connections one token ``sub`` may LISTEN on (0: no limit).
        token_ttl: longest token lifetime, seconds (how long revocations are remembered,
            unless ``revocations`` is given).
        write_interval: shortest time between two merged flushes, seconds (see
            :class:`realtime.connection.FlushScheduler`).
        checks: budgets of token checks (default: unlimited, never closes).
        revocations: the revocation table (default: :class:`realtime.revocations.RevocationTable`
            with its default bounds).
        """
        self.broker = broker
        self.policy = policy
        self._verify = verify
        self._max_per_user = max_connections_per_user
        self._write_interval = write_interval
        self.index: TopicIndex[Connection] = TopicIndex()
        self.peers: dict[Connection, Peer] = {}
        self.published = 0
        self.delivered = 0
        self.gaps = 0
        self.revocations = 0
        self.slow_consumers = 0
        self.refusals: dict[str, int] = {}  # error code -> RESPONSEs sent with it
        self.handshakes: dict[int, int] = {}  # HTTP status -> handshakes answered with it
        self._scheduler: FlushScheduler | None = None
        self._batch_delivered = False  # set by deliver(), read and cleared by end_batch()
        self._user_conns: dict[str, set[Connection]] = {}
        self._subs_of: dict[Connection, list[str]] = {}
        self.revoked = RevocationTable(lifetime=token_ttl + CLOCK_MARGIN) if revocations is None else revocations
        self.bad_tokens = BadTokens()
        self.checks = TokenChecks() if checks is None else checks
        self._expiries: list[tuple[float, int, Connection]] = []  # heap; one live entry per connection
        self._next_exp: dict[Connection, float] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        # signature checks are ~0.1 ms: reconnect storms reuse tokens. FIFO eviction: an
        # OrderedDict pops its oldest in O(1), where a dict's first key is found by
        # skipping every deleted slot before it
        self._verified: OrderedDict[str, Grant] = OrderedDict()

    @property
    def scheduler(self) -> FlushScheduler:
        """The flush scheduler of the running loop (created on first use)."""
        if self._scheduler is None:
            self._scheduler = FlushScheduler(asyncio.get_running_loop(), self._write_interval)
        return self._scheduler

    async def start(self) -> None:
        """Start the broker."""
        await self.broker.start(self.deliver, self.on_gap, self.on_control, self.end_batch)

    async def close(self) -> None:
        """Stop the broker, the expiry timer and the flush scheduler's pacing timer."""
        if self._timer is not None:
            self._timer.cancel()
        try:
            await self.broker.close()
        finally:
            if self._scheduler is not None:
                self._scheduler.close()

    def deliver(self, topic: str, message: str) -> None:
        """Fan one publication out to this instance's listeners of ``topic``."""
        listeners = self.index.get(topic)
        if not listeners:
            return
        frame = encode_text_frame(message_payload(topic, message))
        for conn in listeners:
            conn.send(frame)
        self.delivered += len(listeners)
        self._batch_delivered = True

    def end_batch(self) -> bool:
        """Write out what a burst of :meth:`deliver` calls queued, now rather than on the
        scheduled pass; returns ``True`` if the burst delivered any publication here."""
        delivered, self._batch_delivered = self._batch_delivered, False
        scheduler = self.scheduler
        if scheduler.pending:
            scheduler.flush()
        return delivered

    async def publish(self, topic: str, message: object) -> Topic:
        """Validate and publish one message to every instance.

        Args:
            topic: the topic; must be in the policy.
            message: a string, or any JSON value (sent JSON-encoded).

        Returns:
            The topic.

        Raises:
            topics.BadTopic: malformed or unknown topic.
            realtime.BadMessage: the message cannot be encoded.
            realtime.BrokerUnavailable: the broker did not take it.
        """
        parsed, _ = self.policy.check(topic)
        await self.broker.publish(parsed.topic, message_text(message))
        self.published += 1
        return parsed.topic

    # -- peers --------------------------------------------------------------------

    def verify(self, key: Connection, token: str) -> Grant:
        """Verify a token LISTENed with on ``key`` and refuse revoked ones.

        A token verified before (and not expired) costs no check; one that failed before is
        refused again without a check; any other takes one check from the budgets of
        ``key`` and its address (:class:`realtime.verification.TokenChecks`). After
        ``MAX_BAD_TOKENS_PER_CONNECTION`` failures in a row ``key`` is closed with
        :data:`realtime.connection.CLOSE_BAD_TOKENS` once this reply is queued.

        Raises:
            realtime.verification.TooManyChecks: a budget is spent (the token was not checked).
            keys.InvalidToken: invalid, expired or revoked.
        """
        if not isinstance(token, str):
            raise InvalidToken("auth_token must be a string")
        grant = self._verified.get(token)
        if grant is None or grant.exp <= time.time():
            grant = self._check(key, token)
        if self.revoked.covers(grant):
            self._failed(key)
            raise InvalidToken("token revoked")
        self.checks.succeeded(key)
        return grant

    def _check(self, key: Connection, token: str) -> Grant:
        reason = self.bad_tokens.reason(token)
        if reason is None:
            peer = self.peers.get(key)
            if not self.checks.admit(key, peer.address if peer is not None else ""):
                raise TooManyChecks("too many token checks from this connection or address; slow down")
            try:
                grant = self._verify(token)  # raises for expired tokens too
            except InvalidToken as exc:
                reason = str(exc)
                if exc.lasting:
                    self.bad_tokens.add(token, reason)
            else:
                if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                    self._verified.popitem(last=False)
                self._verified[token] = grant
                return grant
        self._failed(key)
        raise InvalidToken(reason)

    def _failed(self, key: Connection) -> None:
        """Count a refused token on ``key``; close it once it failed too often in a row."""
        if self.checks.failed(key):
            peer = self.peers.get(key)
            if peer is not None:
                log.info("ws_closed_for_bad_tokens", conn_id=key.id, address=peer.address)
                asyncio.get_running_loop().call_soon(peer.close_soon, CloseCode.BAD_TOKENS, "too many invalid tokens")

    def new_session(self, conn: Connection, *, max_topics: int, rate: TokenBucket | None) -> Session:
        """A protocol :class:`Session` for ``conn`` with this node as its owner: token checks
        (with revocation), the topic index, per-user limits and expiry timers."""
        return Session(policy=self.policy, owner=self, key=conn, max_topics=max_topics, rate=rate)

    # -- the sessions' owner (realtime.protocol.Owner) ------------------------------

    def listen(self, key: Connection, topic: Topic) -> None:
        """Index ``key`` under ``topic`` (its session LISTENed)."""
        self.index.add(topic, key)

    def unlisten(self, key: Connection, topic: Topic) -> None:
        """Drop ``key`` from ``topic`` (its session dropped the topic)."""
        self.index.discard(topic, key)

    def granted(self, key: Connection, grant: Grant) -> None:
        """Arm the expiry of ``grant``'s topics on ``key``."""
        self._schedule_expiry(key, grant.exp)

    def released(self, key: Connection, sub: str) -> None:
        """Free ``key``'s slot of ``sub`` (its session holds no topic granted to ``sub`` now)."""
        self._release(key, sub)

    def refused(self, code: str) -> None:
        """Count an error RESPONSE by code."""
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def admit_sub(self, key: Connection, sub: str) -> bool:
        """Take a slot of ``sub``'s ``MAX_CONNECTIONS_PER_USER`` for ``key``; ``False`` when
        they are all taken (a connection that already holds one is admitted again)."""
        conns = self._user_conns.setdefault(sub, set())
        if key in conns:
            return True
        if self._max_per_user and len(conns) >= self._max_per_user:
            if not conns:
                del self._user_conns[sub]
            return False
        conns.add(key)
        self._subs_of.setdefault(key, []).append(sub)
        return True

    def add_peer(self, peer: Peer) -> None:
        """Register a connected peer."""
        self.peers[peer.conn] = peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget a peer, every topic it listened to and its user slots."""
        peer.session.close()
        self.peers.pop(peer.conn, None)
        self._next_exp.pop(peer.conn, None)
        self.checks.forget(peer.conn)
        for sub in list(self._subs_of.get(peer.conn, ())):
            self._release(peer.conn, sub)
        if len(self._expiries) > 2 * len(self._next_exp) + 64:  # drop entries of closed connections
            self._expiries = [(exp, next(self._seq), conn) for conn, exp in self._next_exp.items()]
            heapq.heapify(self._expiries)
            self._arm()

    def on_gap(self) -> None:
        """Tell every listening client that publications may have been missed."""
        self.gaps += 1
        for conn, peer in list(self.peers.items()):
            if peer.session.topics:
                conn.send_payload(gap_payload(sorted(peer.session.topics)))

    def broadcast(self, payload: bytes) -> None:
        """Queue one payload (e.g. RECONNECT) to every connected client."""
        frame = encode_text_frame(payload)
        for conn in self.peers:
            conn.send(frame)

    # -- expiry and revocation ----------------------------------------------------

    def _schedule_expiry(self, conn: Connection, exp: float) -> None:
        current = self._next_exp.get(conn)
        if current is not None and current <= exp:
            return  # the earlier timer entry re-schedules this connection when it fires
        self._next_exp[conn] = exp
        heap = self._expiries
        heapq.heappush(heap, (exp, next(self._seq), conn))
        if heap[0][2] is conn:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expiries:
            delay = max(0.0, self._expiries[0][0] - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        now = time.time()
        heap = self._expiries
        while heap and heap[0][0] <= now:
            exp, _, conn = heapq.heappop(heap)
            if self._next_exp.get(conn) != exp:
                continue  # stale: superseded by an earlier entry, or the peer left
            del self._next_exp[conn]
            peer = self.peers.get(conn)
            if peer is not None:
                self._tell_revoked(peer, peer.session.expire(now))
                upcoming = peer.session.next_expiry()
                if upcoming is not None:
                    self._next_exp[conn] = upcoming
                    heapq.heappush(heap, (upcoming, next(self._seq), conn))
        self._arm()

    def _tell_revoked(self, peer: Peer, topics: list[Topic]) -> None:
        if not topics:
            return
        peer.conn.send_payload(auth_revoked_payload(sorted(topics)))

    def _release(self, conn: Connection, sub: str) -> None:
        subs = self._subs_of.get(conn)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs_of[conn]
        conns = self._user_conns.get(sub)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._user_conns[sub]

    async def revoke(self, *, jti: str | None = None, sub: str | None = None, limited: bool = False) -> None:
        """Revoke WS tokens on every instance: by ``jti``, all of ``sub``'s tokens issued
        until now, or, with both, that ``jti`` only if it belongs to ``sub``.

        Args:
            jti: the token id.
            sub: the user.
            limited: the caller lacks ``realtime:revoke`` (revokes its own tokens): the
                per-user bound and the reserve of the revocation table apply.

        Raises:
            ValueError: neither given.
            realtime.RevocationRefused: this instance's table could not remember it (full,
                or the caller has too many live revocations); it was not sent.
            realtime.BrokerUnavailable: the revocation was not sent.
        """
        if jti is None and sub is None:
            raise ValueError("revoke needs a jti or a sub")
        refusal = self.revoked.refusal(jti=jti, sub=sub, limited=limited, now=time.time())
        if refusal is not None:
            log.warning(
                "revocation_refused",
                reason=str(refusal),
                by_jti=jti is not None,
                limited=limited,
                live=len(self.revoked),
            )
            raise refusal
        await self.broker.publish_control(revocation_message(jti=jti, sub=sub))

    def on_control(self, message: dict[str, object]) -> None:
        """Apply a control message from any instance (currently: ``revoke``): remember it
        for as long as a token it covers can live, and end the grants it covers now."""
        if message.get("type") != "revoke":
            log.warning("unknown_control_message", kind=str(message.get("type"))[:32])
            return
        jti, sub, at = message.get("jti"), message.get("sub"), message.get("at")
        if (
            not isinstance(at, int | float)
            or not (jti is None or (isinstance(jti, str) and len(jti) <= MAX_JTI_LENGTH))
            or not (sub is None or (isinstance(sub, str) and len(sub) <= MAX_SUB_LENGTH))
            or (jti is None and sub is None)
        ):
            log.warning("invalid_control_message")
            return
        self.revocations += 1
        cutoff = float(at)
        if not self.revoked.add(jti=jti, sub=sub, at=cutoff, now=time.time()):
            # only when another instance's table had room, or two raced for the last entry:
            # the live grants still end below, but a later LISTEN with the token is not refused
            log.error("revocation_not_remembered", reason="revocation table full", live=len(self.revoked))

        def matches(grant: Grant) -> bool:
            if jti is not None:
                return grant.jti == jti and (sub is None or grant.sub == sub)
            return grant.sub == sub and grant.iat <= cutoff

        # a grant for ``sub`` holds one of the user's slots: only those connections can match
        conns = list(self.peers) if sub is None else list(self._user_conns.get(sub, ()))
        for conn in conns:
            peer = self.peers.get(conn)
            if peer is not None:
                self._tell_revoked(peer, peer.session.revoke(matches))
