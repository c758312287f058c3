"""The node: topic index + broker + the connected peers of this instance.

Fan-out path, per publication: look up the topic's local listeners; if there are any,
encode the MESSAGE frame once and queue the same bytes on every listener
(:meth:`realtime.connection.Connection.send`, which never awaits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import orjson
import structlog

from keys import Grant
from realtime.broker import Broker
from realtime.connection import Connection, FlushScheduler, encode_text_frame
from realtime.hub import TopicIndex
from realtime.protocol import Session, message_payload
from topics import Topic, TopicPolicy

log = structlog.get_logger("realtime.node")


class Peer(Protocol):
    """One connected client as the node sees it (implemented by the WebSocket adapter)."""

    conn: Connection
    session: Session

    def close_soon(self, code: int, reason: str) -> None:
        """Ask the adapter to close the WebSocket with ``code``."""
        ...


def message_text(message: object) -> str:
    """The wire form of a published message: a string as is, any other JSON value
    JSON-encoded (as Twitch PubSub sends ``data.message``)."""
    return message if isinstance(message, str) else orjson.dumps(message).decode()


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
    """

    def __init__(self, *, broker: Broker, policy: TopicPolicy, verify: Callable[[str], Grant]) -> None:
        """Args:
        broker: the broker (memory or Redis).
        policy: the topic policy.
        verify: token verifier for LISTEN.
        """
        self.broker = broker
        self.policy = policy
        self.verify = verify
        self.index: TopicIndex[Connection] = TopicIndex()
        self.peers: dict[Connection, Peer] = {}
        self.published = 0
        self.delivered = 0
        self.gaps = 0
        self._scheduler: FlushScheduler | None = None

    @property
    def scheduler(self) -> FlushScheduler:
        """The flush scheduler of the running loop (created on first use)."""
        if self._scheduler is None:
            self._scheduler = FlushScheduler(asyncio.get_running_loop())
        return self._scheduler

    async def start(self) -> None:
        """Start the broker."""
        await self.broker.start(self.deliver, self.on_gap)

    async def close(self) -> None:
        """Stop the broker."""
        await self.broker.close()

    def deliver(self, topic: str, message: str) -> None:
        """Fan one publication out to this instance's listeners of ``topic``."""
        listeners = self.index.get(topic)
        if not listeners:
            return
        frame = encode_text_frame(message_payload(topic, message))
        for conn in listeners:
            conn.send(frame)
        self.delivered += len(listeners)

    async def publish(self, topic: str, message: object) -> Topic:
        """Validate and publish one message to every instance.

        Args:
            topic: the topic; must be in the policy.
            message: a string, or any JSON value (sent JSON-encoded).

        Returns:
            The topic.

        Raises:
            topics.BadTopic: malformed or unknown topic.
            realtime.BrokerUnavailable: the broker did not take it.
        """
        parsed, _ = self.policy.check(topic)
        await self.broker.publish(parsed.topic, message_text(message))
        self.published += 1
        return parsed.topic

    def add_peer(self, peer: Peer) -> None:
        """Register a connected peer."""
        self.peers[peer.conn] = peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget a peer and every topic it listened to."""
        peer.session.close()
        self.peers.pop(peer.conn, None)

    def listen_callbacks(self, conn: Connection) -> tuple[Callable[[Topic], None], Callable[[Topic], None]]:
        """The ``listen``/``unlisten`` callbacks a :class:`Session` of ``conn`` uses."""
        index = self.index

        def listen(topic: Topic) -> None:
            index.add(topic, conn)

        def unlisten(topic: Topic) -> None:
            index.discard(topic, conn)

        return listen, unlisten

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
