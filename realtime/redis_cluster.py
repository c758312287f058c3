"""Redis Cluster topology, sans I/O: hash slots, the slot -> master map, redirects.

A Redis Cluster splits the key space (and, since Redis 7.0, the sharded pub/sub channel
space) into 16384 hash slots; every slot is owned by one master. This module holds the pure
logic a cluster client needs and does no I/O: the caller reads ``CLUSTER SHARDS`` (or
``CLUSTER SLOTS``) and hands the reply to :class:`SlotMap`, and hands the text of a
``MOVED`` error to :func:`parse_moved`.

- :func:`key_slot`: the slot of a key or channel name (CRC16/XMODEM mod 16384, with Redis's
  hash-tag rule), as ``CLUSTER KEYSLOT`` answers it.
- :class:`SlotMap`: who owns each slot, built from a ``CLUSTER SHARDS`` or ``CLUSTER SLOTS``
  reply as redis-py returns it (RESP2 lists or RESP3 maps, ``bytes`` or ``str``).
- :func:`diff`: what changed between two maps (slot ranges that moved, masters that came or
  went): what a topology refresh acts on.
- :func:`parse_moved`: the slot and new owner in a ``MOVED 1234 127.0.0.1:7001`` reply.

Exceptions::

    RealtimeError
     +-- ClusterReplyError   (also a ValueError): a reply or redirect that does not parse
     +-- SlotUncovered       (also a LookupError): no master owns the slot
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from realtime.errors import RealtimeError

SLOTS = 16384
"""The number of hash slots of a Redis Cluster."""


class ClusterReplyError(RealtimeError, ValueError):
    """A ``CLUSTER SHARDS``/``CLUSTER SLOTS`` reply or a redirect that does not parse."""


class SlotUncovered(RealtimeError, LookupError):
    """No master owns the slot (the cluster is not fully covered, ``cluster_state:fail``)."""


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.

    Args:
        data: the bytes to check.

    Returns:
        The checksum, 0..65535 (``crc16(b"123456789") == 0x31C3``).
    """
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(name: bytes) -> bytes:
    """The part of ``name`` that Redis hashes: the content of the first ``{...}`` if that
    content is not empty, else the whole name (``{a}{b}`` -> ``a``; ``{}x``, ``a{}{b}`` and
    ``a{b`` -> the whole name)."""
    start = name.find(b"{")
    if start == -1:
        return name
    end = name.find(b"}", start + 1)
    if end == -1 or end == start + 1:
        return name
    return name[start + 1 : end]


def key_slot(name: str | bytes) -> int:
    """The hash slot of a key or channel name, as ``CLUSTER KEYSLOT`` answers it.

    Args:
        name: the key or channel; a ``str`` is encoded as UTF-8 (as redis-py sends it).

    Returns:
        The slot, 0..16383: ``crc16(hash_tag(name)) % 16384``.
    """
    data = name.encode() if isinstance(name, str) else name
    return crc16(hash_tag(data)) % SLOTS


class Address(NamedTuple):
    """A node's client address (host, TCP port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class SlotMove(NamedTuple):
    """A range of slots whose owner changed between two maps (``None``: uncovered)."""

    start: int
    end: int
    """Inclusive."""
    old: Address | None
    new: Address | None


class TopologyChange(NamedTuple):
    """What a refresh has to act on: slot ranges that moved, masters to connect to (new)
    and masters whose connections can be closed (owning no slot any more)."""

    moves: tuple[SlotMove, ...]
    added: frozenset[Address]
    removed: frozenset[Address]

    def __bool__(self) -> bool:
        return bool(self.moves or self.added or self.removed)


class Redirect(NamedTuple):
    """A ``MOVED`` (or ``ASK``) redirect: ``slot`` is served at ``host:port``.

    ``host`` is ``""`` when Redis sent ``MOVED 1234 :7001`` (an unknown endpoint: the
    host of the node that answered).
    """

    slot: int
    host: str
    port: int


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise ClusterReplyError(f"expected a string in the cluster reply, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ClusterReplyError(f"expected an integer in the cluster reply, got {value!r}")


def _fields(value: Any) -> dict[str, Any]:
    """A RESP3 map, or a RESP2 flat ``[key, value, key, value, ...]`` list, as a dict."""
    if isinstance(value, Mapping):
        return {_text(k): v for k, v in value.items()}
    if isinstance(value, list | tuple) and len(value) % 2 == 0:
        return {_text(value[i]): value[i + 1] for i in range(0, len(value), 2)}
    raise ClusterReplyError(f"expected a map or a key/value list in the cluster reply, got {value!r}")


def _node_address(node: Mapping[str, Any]) -> Address:
    """A ``CLUSTER SHARDS`` node's address: its ``endpoint`` (``ip`` when the endpoint is
    empty or ``?``), and its ``port`` (``tls-port`` when it has only that)."""
    endpoint = _text(node.get("endpoint", b""))
    host = endpoint if endpoint not in ("", "?") else _text(node.get("ip", b""))
    port = node.get("port", node.get("tls-port"))
    if not host or not isinstance(port, int):
        raise ClusterReplyError(f"a CLUSTER SHARDS node without an address: {node!r}")
    return Address(host, port)


def _slots_node(node: Any) -> Address:
    """A ``CLUSTER SLOTS`` node, ``[host, port, id, ...]``."""
    if not isinstance(node, list | tuple) or len(node) < 2:
        raise ClusterReplyError(f"a CLUSTER SLOTS node without an address: {node!r}")
    return Address(_text(node[0]), _int(node[1]))


def _ranges(flat: Any) -> Iterator[tuple[int, int]]:
    if not isinstance(flat, list | tuple) or len(flat) % 2:
        raise ClusterReplyError(f"expected [start, end, ...] slot ranges, got {flat!r}")
    for i in range(0, len(flat), 2):
        start, end = _int(flat[i]), _int(flat[i + 1])
        if not 0 <= start <= end < SLOTS:
            raise ClusterReplyError(f"a slot range out of bounds: {start}-{end}")
        yield start, end


class SlotMap:
    """Which master owns each of the 16384 slots, and each master's replicas.

    Immutable; a refresh builds a new map and :func:`diff` compares the two. Built with
    :meth:`from_shards` (``CLUSTER SHARDS``, Redis 7.0+) or :meth:`from_slots`
    (``CLUSTER SLOTS``).
    """

    __slots__ = ("_owner", "_replicas")

    def __init__(
        self, ranges: Iterable[tuple[int, int, Address]], replicas: Mapping[Address, Iterable[Address]]
    ) -> None:
        """A map from owned ranges.

        Args:
            ranges: ``(start, end, master)`` triples, ``end`` inclusive; slots not in any
                range are uncovered.
            replicas: each master's replicas (masters without any may be left out).

        Raises:
            ClusterReplyError: a range out of 0..16383, or a slot given two owners.
        """
        owner: list[Address | None] = [None] * SLOTS
        for start, end, master in ranges:
            if not 0 <= start <= end < SLOTS:
                raise ClusterReplyError(f"a slot range out of bounds: {start}-{end}")
            for slot in range(start, end + 1):
                if owner[slot] is not None and owner[slot] != master:
                    raise ClusterReplyError(f"slot {slot} has two owners: {owner[slot]} and {master}")
                owner[slot] = master
        self._owner: tuple[Address | None, ...] = tuple(owner)
        self._replicas = {master: tuple(sorted(nodes)) for master, nodes in replicas.items()}

    @classmethod
    def from_shards(cls, reply: Sequence[Any]) -> SlotMap:
        """Parse a ``CLUSTER SHARDS`` reply: one entry per shard, each with ``slots`` (a flat
        ``[start, end, ...]`` list) and ``nodes`` (maps with ``ip``, ``endpoint``, ``port``,
        ``role``, ``health``, ...). A shard without a ``master`` node (all of its nodes
        failed and none promoted) leaves its slots uncovered.

        Raises:
            ClusterReplyError: the reply does not have that shape.
        """
        ranges: list[tuple[int, int, Address]] = []
        replicas: dict[Address, list[Address]] = {}
        for entry in reply:
            shard = _fields(entry)
            slots = list(_ranges(shard.get("slots", [])))
            nodes = [_fields(node) for node in shard.get("nodes", [])]
            masters = [_node_address(n) for n in nodes if _text(n.get("role", b"")) == "master"]
            if not masters:
                continue
            master = masters[0]
            replicas[master] = [_node_address(n) for n in nodes if _text(n.get("role", b"")) != "master"]
            ranges.extend((start, end, master) for start, end in slots)
        return cls(ranges, replicas)

    @classmethod
    def from_slots(cls, reply: Sequence[Any]) -> SlotMap:
        """Parse a ``CLUSTER SLOTS`` reply: ``[start, end, [host, port, id, ...], [replica
        host, port, id, ...], ...]`` per range.

        Raises:
            ClusterReplyError: the reply does not have that shape.
        """
        ranges: list[tuple[int, int, Address]] = []
        replicas: dict[Address, set[Address]] = {}
        for entry in reply:
            if not isinstance(entry, list | tuple) or len(entry) < 3:
                raise ClusterReplyError(f"a CLUSTER SLOTS entry without a master: {entry!r}")
            master, *others = (_slots_node(node) for node in entry[2:])
            ranges.append((_int(entry[0]), _int(entry[1]), master))
            replicas.setdefault(master, set()).update(others)
        return cls(ranges, replicas)

    def master_for(self, slot: int) -> Address:
        """The master that owns ``slot``.

        Raises:
            SlotUncovered: no master owns it.
            IndexError: ``slot`` is out of 0..16383.
        """
        if slot < 0:
            raise IndexError(slot)
        master = self._owner[slot]
        if master is None:
            raise SlotUncovered(f"no master owns slot {slot}")
        return master

    def master_for_key(self, name: str | bytes) -> Address:
        """The master that owns the slot of a key or channel (:func:`key_slot`)."""
        return self.master_for(key_slot(name))

    def masters(self) -> frozenset[Address]:
        """The masters that own at least one slot."""
        return frozenset(owner for owner in self._owner if owner is not None)

    def replicas(self, master: Address) -> tuple[Address, ...]:
        """``master``'s replicas as the reply listed them (sorted; empty if unknown)."""
        return self._replicas.get(master, ())

    def slots_of(self, master: Address) -> list[tuple[int, int]]:
        """The slot ranges (``end`` inclusive) ``master`` owns, in order."""
        return [(start, end) for start, end, owner in self.ranges() if owner == master]

    def ranges(self) -> Iterator[tuple[int, int, Address | None]]:
        """Every maximal run of slots with one owner: ``(start, end, owner)``, covering
        0..16383 in order (``owner`` ``None`` for an uncovered run)."""
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or self._owner[slot] != self._owner[start]:
                yield start, slot - 1, self._owner[start]
                start = slot

    def covered(self) -> bool:
        """True when every slot has an owner."""
        return None not in self._owner

    def with_redirect(self, redirect: Redirect, default_host: str = "") -> SlotMap:
        """This map with ``redirect.slot`` owned by the redirect's node (what a ``MOVED``
        says, applied before the next full refresh). ``default_host`` replaces an empty
        redirect host (the host of the node that answered)."""
        if not 0 <= redirect.slot < SLOTS:
            raise IndexError(redirect.slot)
        owner = list(self._owner)
        owner[redirect.slot] = Address(redirect.host or default_host, redirect.port)
        moved = SlotMap((), self._replicas)
        moved._owner = tuple(owner)
        return moved

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotMap):
            return NotImplemented
        return self._owner == other._owner and self._replicas == other._replicas

    def __hash__(self) -> int:
        return hash(self._owner)

    def __repr__(self) -> str:
        runs = ", ".join(f"{s}-{e}: {o}" for s, e, o in self.ranges())
        return f"SlotMap({runs})"


def diff(old: SlotMap, new: SlotMap) -> TopologyChange:
    """What changed from ``old`` to ``new``: the runs of slots whose owner differs (with
    both owners), the masters only ``new`` has and the masters only ``old`` has.

    A subscriber with one connection per master acts on it: subscribe the channels of each
    moved run on ``new`` owner's connection (after ``old``'s pushed ``sunsubscribe``),
    connect to ``added`` and close ``removed``.
    """
    moves: list[SlotMove] = []
    for slot, (was, now) in enumerate(zip(old._owner, new._owner, strict=True)):
        if was == now:
            continue
        last = moves[-1] if moves else None
        if last is not None and last.end == slot - 1 and (last.old, last.new) == (was, now):
            moves[-1] = last._replace(end=slot)
        else:
            moves.append(SlotMove(slot, slot, was, now))
    before, after = old.masters(), new.masters()
    return TopologyChange(tuple(moves), after - before, before - after)


def parse_moved(message: str | bytes) -> Redirect:
    """The slot and node of a ``MOVED`` or ``ASK`` redirect.

    Args:
        message: the error text, with or without the leading word (redis-py's ``MovedError``
            drops it): ``MOVED 1234 127.0.0.1:7001``, ``1234 127.0.0.1:7001``,
            ``MOVED 1234 :7001`` (an unknown endpoint: host ``""``) or an IPv6 address
            (``MOVED 1234 ::1:7001``: the port follows the last colon).

    Returns:
        The redirect.

    Raises:
        ClusterReplyError: the text is not a redirect.
    """
    text = _text(message).strip()
    parts = text.split()
    if parts and parts[0] in ("MOVED", "ASK"):
        parts = parts[1:]
    try:
        slot_text, node = parts
        host, _, port_text = node.rpartition(":")
        slot, port = int(slot_text), int(port_text)
    except ValueError:
        raise ClusterReplyError(f"not a MOVED redirect: {text!r}") from None
    if not 0 <= slot < SLOTS or not 0 < port < 65536 or not _:
        raise ClusterReplyError(f"not a MOVED redirect: {text!r}")
    return Redirect(slot, host, port)
