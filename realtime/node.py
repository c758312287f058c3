"""The node: topic index + broker + the connected peers of this instance.

Fan-out path, per publication: look up the topic's local listeners; if there are any,
encode the MESSAGE frame once and queue the same bytes on every listener
(:meth:`realtime.send_queue.SendQueue.send`, which never awaits).

The node also ends grants: when the token behind a LISTEN expires, or is revoked on
any instance (a control message through the broker), the topics it granted are
dropped and the client receives ``AUTH_REVOKED``.

It is made of named parts, each in its own module:

- :class:`realtime.topic_index.TopicIndex`: topic -> local listeners;
- :class:`realtime.stats.NodeStats`: the counters (read by ``/metrics`` and the console);
- :class:`realtime.revocations.RevocationTable`: the revoked tokens remembered;
- :class:`realtime.grant_expiry.GrantExpiry`: the expiry heap and its timer;
- :class:`realtime.user_slots.UserSlots`: ``MAX_CONNECTIONS_PER_USER``;
- :mod:`realtime.verification`: the verified-token cache, failed tokens and the budgets
  of token checks;
- :mod:`realtime.envelope`: how publications and control messages are encoded;
- :class:`realtime.recovery.Recovery`: offsets, resuming with ``since``, catching up;
- :class:`realtime.held_listens.HeldListens`: RESPONSEs waiting for a topic's SUBSCRIBE;
- :class:`realtime.presence.Presence`: this instance's presence entries, JOIN/LEAVE.

The node is the broker's :class:`realtime.broker.BrokerEventHandler` and the sessions'
:class:`realtime.protocol.Owner`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

import structlog

from keys import Grant, InvalidToken
from realtime.broker import Broker
from realtime.disconnect import CloseCode
from realtime.envelope import InvalidEnvelope, UnknownControl, message_text, parse_control, revocation_message
from realtime.errors import BrokerUnavailable, NoHistory
from realtime.grant_expiry import GrantExpiry
from realtime.held_listens import HeldListen, HeldListens
from realtime.history import HistoryPage
from realtime.limits import TokenBucket
from realtime.presence import DEFAULT_TTL, Presence
from realtime.protocol import (
    ERR_SERVER,
    Listen,
    Session,
    auth_revoked_payload,
    data_response,
    gap_payload,
    message_payload,
    presence_event_payload,
    response,
)
from realtime.recovery import Recovery
from realtime.revocations import CLOCK_MARGIN, RevocationTable
from realtime.send_queue import FlushScheduler, SendQueue, encode_text_frame
from realtime.stats import NodeStats
from realtime.topic_index import TopicIndex
from realtime.user_slots import UserSlots
from realtime.verification import BadTokens, TokenChecks, TooManyChecks, VerifiedTokens
from topics import ParsedTopic, Topic, TopicPolicy, TopicRule

log = structlog.get_logger("realtime.node")


class Peer(Protocol):
    """One connected client as the node sees it (implemented by the WebSocket adapter)."""

    conn: SendQueue
    session: Session

    @property
    def address(self) -> str:
        """The client's address (for per-address budgets)."""
        ...

    def close_soon(self, code: int, reason: str) -> None:
        """Ask the adapter to close the WebSocket with ``code``."""
        ...


class Node:
    """Everything one server instance shares between its connections.

    Attributes:
        index: topic -> local listeners.
        peers: every open connection of this instance.
        stats: the counters (published, delivered, gaps, revocations, slow consumers,
            refusals by error code, handshakes by HTTP status); read them there, count
            through its ``count_*`` methods.
        revoked: the revoked tokens this instance remembers.
        verified: tokens verified lately, with their grants (accepted again without a check).
        bad_tokens: tokens that failed verification lately (refused again without a check).
        checks: budgets of token checks per address and connection.
        expiries: when each connection's earliest grant expires.
        slots: the per-user connection slots.
        recovery: the streams of topics with history (:mod:`realtime.recovery`).
        held: LISTENs whose RESPONSE waits for the broker to receive their topics.
        presence: this instance's presence entries (topics whose rule keeps presence).
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
        presence_ttl: float = DEFAULT_TTL,
        presence_max_clients: int = 100,
        presence_show_address: bool = False,
    ) -> None:
        """Args:
        broker: the broker (memory or Redis).
        policy: the topic policy.
        verify: token verifier for LISTEN; raises :class:`keys.InvalidToken`.
        max_connections_per_user: connections one token ``sub`` may LISTEN on (0: no limit).
        token_ttl: longest token lifetime, seconds (how long revocations are remembered,
            unless ``revocations`` is given).
        write_interval: shortest time between two merged flushes, seconds (see
            :class:`realtime.send_queue.FlushScheduler`).
        checks: budgets of token checks (default: unlimited, never closes).
        revocations: the revocation table (default: :class:`realtime.revocations.RevocationTable`
            with its default bounds).
        presence_ttl: seconds a presence entry lives without a refresh (``PRESENCE_TTL``).
        presence_max_clients: most clients a presence read lists (``PRESENCE_MAX_CLIENTS``).
        presence_show_address: put each connection's address in its presence ``info``
            (``PRESENCE_SHOW_ADDRESS``; off: presence never shows an address).
        """
        self.broker = broker
        self.policy = policy
        self._verify = verify
        self._write_interval = write_interval
        self.index: TopicIndex[SendQueue] = TopicIndex()
        self.peers: dict[SendQueue, Peer] = {}
        self.stats = NodeStats()
        self._scheduler: FlushScheduler | None = None
        self._batch_delivered = False  # set by on_publication(), read and cleared by on_batch_end()
        self.slots: UserSlots[SendQueue] = UserSlots(max_connections_per_user)
        self.revoked = RevocationTable(lifetime=token_ttl + CLOCK_MARGIN) if revocations is None else revocations
        self.verified = VerifiedTokens()
        self.bad_tokens = BadTokens()
        self.checks = TokenChecks() if checks is None else checks
        self.expiries: GrantExpiry[SendQueue] = GrantExpiry(self._expire)
        self.recovery = Recovery(broker, self.index)
        self._interest: dict[str, int] = {}  # topic -> connections holding it (index, recovery or held)
        self.held: HeldListens[SendQueue] = HeldListens()
        self.presence = Presence(broker.presence, ttl=presence_ttl, max_clients=presence_max_clients)
        self._show_address = presence_show_address
        self._tasks: set[asyncio.Task[None]] = set()  # presence reads in flight

    @property
    def scheduler(self) -> FlushScheduler:
        """The flush scheduler of the running loop (created on first use)."""
        if self._scheduler is None:
            self._scheduler = FlushScheduler(asyncio.get_running_loop(), self._write_interval)
        return self._scheduler

    async def start(self) -> None:
        """Start the broker, with this node as its event handler."""
        await self.broker.start(self)

    async def close(self) -> None:
        """Remove this instance's presence entries, then stop the broker, the expiry timer
        and the flush scheduler's pacing timer."""
        self.expiries.close()
        self.recovery.close()
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.presence.close()
        except Exception:  # never keep the broker open for it
            log.exception("presence_close_failed")
        try:
            await self.broker.close()
        finally:
            if self._scheduler is not None:
                self._scheduler.close()

    # -- the broker's event handler (realtime.broker.BrokerEventHandler) ----------

    def on_publication(self, topic: str, message: str, offset: int = 0, epoch: str = "") -> None:
        """Fan one publication out to this instance's listeners of ``topic`` (one with an
        offset through :class:`realtime.recovery.Recovery`, which drops duplicates and holds
        back what follows a hole). An offset on a topic without history (a raw ``PUBLISH``
        that forwards a MESSAGE's data) is ignored: it is delivered as any raw publication."""
        if offset and topic in self.recovery:
            delivered = self.recovery.on_publication(topic, message, offset, epoch)
            if delivered:
                self.stats.count_delivered(delivered)
                self._batch_delivered = True
            return
        listeners = self.index.get(topic)
        if not listeners:
            return
        frame = encode_text_frame(message_payload(topic, message))
        for conn in listeners:
            conn.send(frame)
        self.stats.count_delivered(len(listeners))
        self._batch_delivered = True

    def on_batch_end(self) -> int:
        """Write out what a burst of :meth:`on_publication` calls queued, now rather than on
        the scheduled pass; returns the frames written (at least 1) if the burst delivered a
        publication here, else 0 (the link rests only where its frames are many)."""
        delivered, self._batch_delivered = self._batch_delivered, False
        scheduler = self.scheduler
        written = scheduler.flush() if scheduler.pending else 0
        return max(written, 1) if delivered else 0

    def on_gap(self, topics: Collection[str] | None = None) -> None:
        """Publications may have been missed (on every topic, or on ``topics`` only): catch
        topics with history up from history (:meth:`realtime.recovery.Recovery.on_gap`) and
        tell every client listening to a topic without history (``GAP``, reason
        ``broker_reconnected``)."""
        self.stats.count_gap()
        self.presence.refresh()  # Redis may have lost them (a restart without its data)
        recovery = self.recovery
        recovery.on_gap(topics)
        scope = None if topics is None else set(topics)
        for conn, peer in list(self.peers.items()):
            lost = sorted(t for t in peer.session.topics if t not in recovery and (scope is None or t in scope))
            if lost:
                conn.send_payload(gap_payload(lost))

    def on_presence_event(self, topic: str, kind: str, entry: dict[str, Any]) -> None:
        """Send a JOIN or LEAVE to ``topic``'s local listeners (encoded once)."""
        listeners = self.index.get(topic)
        if not listeners:
            return
        frame = encode_text_frame(presence_event_payload(topic, kind, entry))
        for conn in listeners:
            conn.send(frame)
        self.presence.events += len(listeners)

    def on_control(self, message: dict[str, object]) -> None:
        """Apply a control message from any instance (currently: ``revoke``): remember it
        for as long as a token it covers can live, and end the grants it covers now."""
        try:
            revocation = parse_control(message)
        except UnknownControl as exc:
            log.warning("unknown_control_message", kind=exc.kind)
            return
        except InvalidEnvelope:
            log.warning("invalid_control_message")
            return
        self.stats.count_revocation()
        jti, sub, cutoff = revocation.jti, revocation.sub, revocation.at
        if not self.revoked.add(jti=jti, sub=sub, at=cutoff, now=time.time()):
            # only when another instance's table had room, or two raced for the last entry:
            # the live grants still end below, but a later LISTEN with the token is not refused
            log.error("revocation_not_remembered", reason="revocation table full", live=len(self.revoked))

        def matches(grant: Grant) -> bool:
            if jti is not None:
                return grant.jti == jti and (sub is None or grant.sub == sub)
            return grant.sub == sub and grant.iat <= cutoff

        # a grant for ``sub`` holds one of the user's slots: only those connections can match
        conns = list(self.peers) if sub is None else self.slots.holders(sub)
        for conn in conns:
            peer = self.peers.get(conn)
            if peer is not None:
                self._tell_revoked(peer, peer.session.revoke(matches))

    # -- publishing -----------------------------------------------------------------

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
        parsed, rule = self.policy.check(topic)
        await self.broker.publish(parsed.topic, message_text(message), rule if rule.has_history else None)
        self.stats.count_published()
        return parsed.topic

    async def history(
        self, topic: str, *, since: int = 0, limit: int = 100
    ) -> tuple[ParsedTopic, TopicRule, HistoryPage]:
        """Read a topic's history (for ``GET /history/{topic}``): the publications after
        offset ``since``, oldest first, at most ``limit`` (capped by the rule's
        ``history_size``), with the topic's current offset and epoch.

        Returns:
            The parsed topic, its rule (for the caller's access check) and the page.

        Raises:
            topics.BadTopic: malformed or unknown topic.
            realtime.NoHistory: the topic's rule keeps no history.
            ValueError: ``since`` or ``limit`` negative.
            realtime.BrokerUnavailable: the broker could not be read.
        """
        parsed, rule = self.policy.check(topic)
        if not rule.has_history:
            raise NoHistory(f"topic {parsed.name!r} keeps no history (its history_size is 0)")
        if since < 0 or limit < 0:
            raise ValueError("since and limit must not be negative")
        page = await self.broker.history(parsed.topic, since=since, limit=min(limit, rule.history_size), rule=rule)
        return parsed, rule, page

    def broadcast(self, payload: bytes) -> None:
        """Queue one payload (e.g. RECONNECT) to every connected client."""
        frame = encode_text_frame(payload)
        for conn in self.peers:
            conn.send(frame)

    async def revoke(self, *, jti: str | None = None, sub: str | None = None, limited: bool = False) -> None:
        """Revoke WS tokens on every instance: by ``jti``, all of ``sub``'s tokens issued
        until now, or, with both, that ``jti`` only if it belongs to ``sub``.

        Args:
            jti: the token id.
            sub: the user.
            limited: the caller lacks ``realtime:revoke`` (revokes its own tokens): the
                per-user bound and the reserve of the revocation table apply.

        Raises:
            ValueError: neither given, or one that no instance would accept (too long).
            realtime.RevocationRefused: this instance's table could not remember it (full,
                or the caller has too many live revocations); it was not sent.
            realtime.BrokerUnavailable: the revocation was not sent.
        """
        if jti is None and sub is None:
            raise ValueError("revoke needs a jti or a sub")
        message = revocation_message(jti=jti, sub=sub)
        try:
            parse_control(message)  # what every instance will accept: never a 202 applied nowhere
        except InvalidEnvelope as exc:
            raise ValueError(f"cannot revoke: {exc}") from None
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
        await self.broker.publish_control(message)

    # -- peers --------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Register a connected peer."""
        self.peers[peer.conn] = peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget a peer, every topic it listened to, its user slots and its expiry."""
        peer.session.close()
        self.held.forget(peer.conn)
        self.peers.pop(peer.conn, None)
        self.expiries.forget(peer.conn)
        self.checks.forget(peer.conn)
        self.slots.release_all(peer.conn)

    def new_session(self, conn: SendQueue, *, max_topics: int, rate: TokenBucket | None) -> Session:
        """A protocol :class:`Session` for ``conn`` with this node as its owner: token checks
        (with revocation), the topic index, per-user limits and expiry timers."""
        return Session(policy=self.policy, owner=self, key=conn, max_topics=max_topics, rate=rate)

    # -- the sessions' owner (realtime.protocol.Owner) ------------------------------

    def verify(self, key: SendQueue, token: str) -> Grant:
        """Verify a token LISTENed with on ``key`` and refuse revoked ones.

        A token verified before (and not expired) costs no check; one that failed before is
        refused again without a check; any other takes one check from the budgets of
        ``key`` and its address (:class:`realtime.verification.TokenChecks`). After
        ``MAX_BAD_TOKENS_PER_CONNECTION`` failures in a row ``key`` is closed with
        :attr:`realtime.disconnect.CloseCode.BAD_TOKENS` once this reply is queued.

        Raises:
            realtime.verification.TooManyChecks: a budget is spent (the token was not checked).
            keys.InvalidToken: invalid, expired or revoked.
        """
        if not isinstance(token, str):
            raise InvalidToken("auth_token must be a string")
        grant = self.verified.get(token, time.time())
        if grant is None:
            grant = self._check(key, token)
        if self.revoked.covers(grant):
            self._failed(key)
            raise InvalidToken("token revoked")
        self.checks.succeeded(key)
        return grant

    def _check(self, key: SendQueue, token: str) -> Grant:
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
                self.verified.add(token, grant)
                return grant
        self._failed(key)
        raise InvalidToken(reason)

    def _failed(self, key: SendQueue) -> None:
        """Count a refused token on ``key``; close it once it failed too often in a row."""
        if self.checks.failed(key):
            peer = self.peers.get(key)
            if peer is not None:
                log.info("ws_closed_for_bad_tokens", conn_id=key.id, address=peer.address)
                asyncio.get_running_loop().call_soon(peer.close_soon, CloseCode.BAD_TOKENS, "too many invalid tokens")

    def listen(self, key: SendQueue, topics: list[Listen], reply: bytes) -> bool:
        """``key``'s session LISTENed to ``topics``: make the broker receive them, and index
        ``key`` under each (at once or, with ``since``, once it has what it missed:
        :meth:`realtime.recovery.Recovery.listen`). When the broker does not receive one of
        them yet (its SUBSCRIBE is on the way), keep ``reply`` and do all of it, RESPONSE
        first, once it does (:meth:`on_listen_ready`); returns ``False`` then."""
        waiting: set[str] = set()
        for item in topics:
            topic = item.topic
            self._interest[topic] = self._interest.get(topic, 0) + 1
            if not self.broker.watch(topic):
                waiting.add(topic)
        if not waiting:
            for item in topics:
                self.recovery.listen(key, item.topic, item.rule, item.since)
                if item.rule.presence:
                    self._join(key, item)
            return True
        self.held.hold(key, reply, topics, waiting)
        return False

    def on_listen_ready(self, topics: list[str]) -> None:
        """The broker receives ``topics`` now (or stopped waiting for them): answer the
        LISTENs that waited on them."""
        for held in self.held.ready(topics):
            self._answer(held)

    def _answer(self, held: HeldListen[SendQueue]) -> None:
        """Send a held LISTEN's RESPONSE, then index its connection under its topics."""
        held.conn.send_payload(held.reply)
        for item in held.topics.values():
            self.recovery.listen(held.conn, item.topic, item.rule, item.since)
            if item.rule.presence:
                self._join(held.conn, item)

    def renew(self, key: SendQueue, topics: list[Listen]) -> None:
        """``key`` LISTENed again to topics with presence it holds: rewrite its entries
        (unchanged: a refresh; another user or ``client_info``: a LEAVE and a JOIN)."""
        presence = self.presence
        client = presence.client_id(key.id)
        for item in topics:
            if presence.holds(item.topic, client):  # not a LISTEN still waiting for its RESPONSE
                self._join(key, item)

    def _join(self, key: SendQueue, item: Listen) -> None:
        """Enter ``key`` into ``item.topic``'s presence (with its address in ``info`` only
        when the operator turned that on)."""
        info = item.info
        if self._show_address:
            peer = self.peers.get(key)
            info = {**(info or {}), "address": peer.address if peer is not None else ""}
        presence = self.presence
        presence.join(item.topic, item.rule, presence.client_id(key.id), item.user, info)

    def unlisten(self, key: SendQueue, topic: Topic) -> None:
        """Drop ``key`` from ``topic`` (its session dropped the topic)."""
        left = self._interest.get(topic, 1) - 1
        if left > 0:
            self._interest[topic] = left
        else:
            self._interest.pop(topic, None)
            self.held.forget_topic(topic)
            self.broker.unwatch(topic)
        was_held, complete = self.held.drop(key, topic)
        if complete is not None:
            self._answer(complete)
        if not was_held:
            self.recovery.unlisten(key, topic)
        presence = self.presence
        if topic in presence:
            presence.leave(topic, presence.client_id(key.id))

    def presence_request(self, key: SendQueue, nonce: str, topic: Topic, rule: TopicRule) -> None:
        """Answer a PRESENCE (checked by the session): read ``topic``'s presence and send
        the RESPONSE with its ``data`` (``ERR_SERVER`` if the broker cannot be read, or
        the read fails otherwise)."""
        task = asyncio.get_running_loop().create_task(self._answer_presence(key, nonce, topic, rule))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_presence(self, key: SendQueue, nonce: str, topic: Topic, rule: TopicRule) -> None:
        try:
            snapshot = await self.presence.read(topic, rule)
        except Exception as exc:  # every PRESENCE gets its RESPONSE
            if isinstance(exc, BrokerUnavailable):
                log.warning("presence_read_failed", topic=topic[:128], error=str(exc))
            else:  # e.g. an entry in Redis that is not ours (not JSON)
                log.exception("presence_read_failed", topic=topic[:128])
            self.stats.count_refusal(ERR_SERVER)
            key.send_payload(response(nonce, ERR_SERVER, "presence could not be read; try again"))
            return
        key.send_payload(data_response(nonce, snapshot.as_data()))
        key.flush()  # an answer, not a stream: not held back by the write pacing

    def granted(self, key: SendQueue, grant: Grant) -> None:
        """Arm the expiry of ``grant``'s topics on ``key``."""
        self.expiries.schedule(key, grant.exp)

    def released(self, key: SendQueue, sub: str) -> None:
        """Free ``key``'s slot of ``sub`` (its session holds no topic granted to ``sub`` now)."""
        self.slots.release(key, sub)

    def refused(self, code: str) -> None:
        """Count an error RESPONSE by code."""
        self.stats.count_refusal(code)

    def admit_sub(self, key: SendQueue, sub: str) -> bool:
        """Take a slot of ``sub``'s ``MAX_CONNECTIONS_PER_USER`` for ``key``; ``False`` when
        they are all taken (a connection that already holds one is admitted again)."""
        return self.slots.admit(key, sub)

    # -- expiry ---------------------------------------------------------------------

    def _expire(self, conn: SendQueue, now: float) -> float | None:
        """End ``conn``'s grants that expired by ``now`` (for :attr:`expiries`); returns its
        next expiry."""
        peer = self.peers.get(conn)
        if peer is None:
            return None
        self._tell_revoked(peer, peer.session.expire(now))
        return peer.session.next_expiry()

    def _tell_revoked(self, peer: Peer, topics: list[Topic]) -> None:
        if not topics:
            return
        peer.conn.send_payload(auth_revoked_payload(sorted(topics)))
