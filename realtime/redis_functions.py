"""History (and presence) on Redis: a Redis Function library (Redis 7.0+) and its asyncio wrapper.

The library is generated from the data channel and the topic policy (every topic name
whose rule keeps history, with its size and ttl, is baked into it), so any service can
publish into history with the same guarantees as the server::

    FCALL <p>_publish 1 <channel>:{<topic>}:history <topic> <message>
        -> [offset, epoch]
    FCALL <p>_history 1 <channel>:{<topic>}:history <topic> <since> <limit>
        -> [offset, epoch, first, [offset1, message1, offset2, message2, ...]]

where ``<p>`` is the channel with every character outside ``[A-Za-z0-9_]`` replaced by
``_`` (the library is named ``<p>``; default ``realtime``: ``FCALL realtime_publish``).
Libraries are global to a Redis server, hence one per channel.

Keys, per topic (the topic is the hash tag, so both share a Cluster slot):

- ``<channel>:{<topic>}:history``: a stream, one entry per publication, ID
  ``<offset>-0``, field ``m`` = the message text; trimmed to exactly ``history_size``.
- ``<channel>:{<topic>}:meta``: a hash, ``o`` = the last offset, ``e`` = the epoch.
- ``<channel>:{<topic>}``: the topic's pub/sub channel (:func:`topic_channel`).

Both get ``EXPIRE history_ttl`` on every publication. ``<p>_publish`` atomically starts a
new epoch when the meta hash (or its epoch) is missing (never published, expired, Redis
restarted without its data: the stream is deleted and offsets restart at 1), increments
the offset, appends to the stream, refreshes both ttls and PUBLISHes the envelope
``{"topic", "message", "offset", "epoch"}`` (:mod:`realtime.envelope`) on the topic's
channel.
``<p>_history`` reads the entries after ``since`` (oldest first, at most ``limit``); a
topic without history answers offset 0 and the empty epoch ``""`` and creates nothing (as
:meth:`realtime.history.MemoryHistory.read` does); the function is flagged ``no-writes``.

An epoch is the Redis server's clock in microseconds (``TIME``) and 16 pseudo-random bits,
in hex. (``math.random`` in Redis functions restarts the same sequence at every server
start: the clock is what makes an epoch new across restarts.)

The same library holds presence's two functions, ``<p>_presence`` and ``<p>_presence_get``
(keys and calls: :mod:`realtime.redis_presence`), with the policy's presence rules baked in
the same way.

Every instance on a channel must run the same topic policy: loading the library
(``FUNCTION LOAD REPLACE``, at start and after every reconnect) replaces the one another
instance loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from realtime.errors import BrokerUnavailable, NoHistory
from realtime.history import HistoryPage, Position, Publication
from topics import TopicPolicy, TopicRule

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
MAX_PRUNE_ROUNDS = 1000
"""Most ``<p>_presence_get`` calls one read makes while expired entries are left (1,000 each)."""
_LUA_PLAIN = re.compile(rb"[A-Za-z0-9 _:.\-]")


class FunctionNames(NamedTuple):
    """The names of one channel's library and its functions."""

    library: str
    publish: str
    history: str
    presence: str
    presence_get: str


def function_names(channel: str) -> FunctionNames:
    """The library and function names for ``channel`` (``[A-Za-z0-9_]`` only: every other
    character becomes ``_``)."""
    prefix = _UNSAFE.sub("_", channel)
    return FunctionNames(
        prefix, f"{prefix}_publish", f"{prefix}_history", f"{prefix}_presence", f"{prefix}_presence_get"
    )


def history_key(channel: str, topic: str) -> str:
    """The stream holding ``topic``'s history: ``<channel>:{<topic>}:history``."""
    return f"{channel}:{{{topic}}}:history"


def topic_channel(channel: str, topic: str) -> str:
    """The pub/sub channel of ``topic``'s publications: ``<channel>:{<topic>}`` (the topic is
    the hash tag, as in its history keys)."""
    return f"{channel}:{{{topic}}}"


def meta_key(channel: str, topic: str) -> str:
    """The hash holding ``topic``'s offset (``o``) and epoch (``e``): ``<channel>:{<topic>}:meta``."""
    return f"{channel}:{{{topic}}}:meta"


def presence_key(channel: str, topic: str) -> str:
    """The sorted set of ``topic``'s present clients (score: expiry, Unix milliseconds):
    ``<channel>:{<topic>}:presence``; ``...:presence:info`` (a hash, client -> entry JSON)
    and ``...:presence:users`` (a hash, user -> entries) go with it."""
    return f"{channel}:{{{topic}}}:presence"


def _lua_string(value: str) -> str:
    """A Lua 5.1 string literal for ``value`` (bytes outside a safe set as ``\\ddd``)."""
    raw = value.encode()
    return '"' + "".join(chr(b) if _LUA_PLAIN.fullmatch(bytes([b])) else f"\\{b:03d}" for b in raw) + '"'


def _lua_table(rows: dict[str, str]) -> str:
    """A Lua table literal of topic name -> Lua value (text), sorted by name."""
    lines = [f"  [{_lua_string(name)}] = {value}," for name, value in sorted(rows.items())]
    return "{\n" + "\n".join(lines) + "\n}" if lines else "{}"


def _policy_table(rules: Iterable[TopicRule]) -> str:
    return _lua_table({r.name: f"{{{r.history_size}, {r.history_ttl}}}" for r in rules if r.has_history})


def _presence_table(rules: Iterable[TopicRule]) -> str:
    return _lua_table({r.name: "1" if r.join_leave else "0" for r in rules if r.presence})


_LIBRARY = """#!lua name=@LIBRARY@
-- Generated by realtime.redis_functions for channel @CHANNEL_COMMENT@: do not edit.
local CHANNEL = @CHANNEL@
-- topic name -> {history_size, history_ttl seconds}
local POLICY = @POLICY@

-- the rule, stream key, meta key and key prefix of a call, or nil and an error message
local function resolve(keys, topic)
  if #keys ~= 1 then
    return nil, nil, nil, 'ERR expected 1 key: the topic\\'s history stream'
  end
  local dot = string.find(topic, '.', 1, true)
  local name = dot and string.sub(topic, 1, dot - 1) or topic
  local rule = POLICY[name]
  if not rule then
    return nil, nil, nil, 'ERR topic name ' .. name .. ' keeps no history on channel ' .. CHANNEL
  end
  local prefix = CHANNEL .. ':{' .. topic .. '}:'
  local stream = prefix .. 'history'
  if keys[1] ~= stream then
    return nil, nil, nil, 'ERR wrong key for topic ' .. topic .. ': expected ' .. stream
  end
  return rule, stream, prefix .. 'meta', prefix
end

local function new_epoch()
  local now = redis.call('TIME')
  local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
  return string.format('%x%04x', micros, math.random(0, 65535))
end

-- an integer from 0 to 2^53 - 1 given as decimal digits, or nil
local function count(arg)
  if type(arg) ~= 'string' or not string.match(arg, '^%d+$') or #arg > 16 then
    return nil
  end
  local n = tonumber(arg)
  if n > 9007199254740991 then
    return nil
  end
  return n
end

local function publish(keys, args)
  if #args ~= 2 then
    return redis.error_reply('ERR usage: FCALL @PUBLISH@ 1 <stream key> <topic> <message>')
  end
  local topic, message = args[1], args[2]
  local rule, stream, meta, prefix = resolve(keys, topic)
  if not rule then
    return redis.error_reply(prefix)  -- the error message
  end
  local epoch = redis.call('HGET', meta, 'e')
  local offset
  if not epoch then
    epoch = new_epoch()
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'o', 1, 'e', epoch)
    offset = 1
  else
    offset = redis.call('HINCRBY', meta, 'o', 1)
  end
  local digits = string.format('%d', offset)
  redis.call('XADD', stream, 'MAXLEN', rule[1], digits .. '-0', 'm', message)
  redis.call('EXPIRE', stream, rule[2])
  redis.call('EXPIRE', meta, rule[2])
  -- cjson writes numbers with 14 significant digits: the offset is spliced in as text
  local envelope = '{"topic":' .. cjson.encode(topic) .. ',"message":' .. cjson.encode(message)
    .. ',"offset":' .. digits .. ',"epoch":' .. cjson.encode(epoch) .. '}'
  -- the topic's own channel (per-topic routing): instances subscribe to it while they have
  -- a listener of the topic; the prefix ends with ':', the channel is the prefix without it
  redis.call('@PUBLISH_COMMAND@', string.sub(prefix, 1, -2), envelope)
  return {offset, epoch}
end

local function history(keys, args)
  if #args ~= 3 then
    return redis.error_reply('ERR usage: FCALL @HISTORY@ 1 <stream key> <topic> <since> <limit>')
  end
  local topic = args[1]
  local since, limit = count(args[2]), count(args[3])
  if not since or not limit then
    return redis.error_reply('ERR since and limit must be non-negative integers')
  end
  local rule, stream, meta, err = resolve(keys, topic)
  if not rule then
    return redis.error_reply(err)
  end
  local state = redis.call('HMGET', meta, 'o', 'e')
  local offset, epoch = tonumber(state[1]) or 0, state[2]
  if not epoch then
    -- no history (never published, expired, lost): say so and create nothing, so that
    -- LISTENs of ever new topics cannot fill Redis with empty histories
    return {0, '', 1, {}}
  end
  local first = offset + 1
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if head then
    first = tonumber(string.match(head[1], '^%d+'))
  end
  local items = {}
  if limit > 0 and since < offset then
    local start = string.format('%d', math.max(since + 1, first)) .. '-0'
    for _, entry in ipairs(redis.call('XRANGE', stream, start, '+', 'COUNT', limit)) do
      items[#items + 1] = tonumber(string.match(entry[1], '^%d+'))
      items[#items + 1] = entry[2][2]
    end
  end
  return {offset, epoch, first, items}
end

-- topic name -> 1 if its listeners get JOIN/LEAVE, else 0 (names that keep presence only)
local PRESENCE = @PRESENCE_RULES@
local PRUNE = 1000  -- most expired entries pruned per call
local MAX_TTL = 86400  -- seconds, PRESENCE_TTL's bound: a longer ttl would keep ghosts for that long

-- join_leave, the sorted set, info hash, users hash and channel of a call, or nil and an error
local function presence_resolve(keys, topic)
  if #keys ~= 1 then
    return nil, 'ERR expected 1 key: the presence set of the topic'
  end
  local dot = string.find(topic, '.', 1, true)
  local name = dot and string.sub(topic, 1, dot - 1) or topic
  local join_leave = PRESENCE[name]
  if not join_leave then
    return nil, 'ERR topic name ' .. name .. ' keeps no presence on channel ' .. CHANNEL
  end
  local channel = CHANNEL .. ':{' .. topic .. '}'
  local set = channel .. ':presence'
  if keys[1] ~= set then
    return nil, 'ERR wrong key for topic ' .. topic .. ': expected ' .. set
  end
  return {join_leave = join_leave, set = set, info = set .. ':info', users = set .. ':users',
          channel = channel, topic = topic}
end

local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function presence_event(p, kind, entry)
  if p.join_leave == 1 then
    redis.call('@PUBLISH_COMMAND@', p.channel,
      '{"topic":' .. cjson.encode(p.topic) .. ',"presence":"' .. kind .. '","entry":' .. entry .. '}')
  end
end

local function presence_remove(p, client)
  if redis.call('ZREM', p.set, client) == 0 then
    return
  end
  local entry = redis.call('HGET', p.info, client)
  redis.call('HDEL', p.info, client)
  if entry then
    local ok, decoded = pcall(cjson.decode, entry)
    local user = ok and type(decoded) == 'table' and decoded['user'] or nil
    if type(user) == 'string' and redis.call('HINCRBY', p.users, user, -1) <= 0 then
      redis.call('HDEL', p.users, user)
    end
    presence_event(p, 'leave', entry)
  end
end

-- remove expired entries (at most PRUNE); returns the time now, Unix ms
local function presence_prune(p)
  local now = now_ms()
  for _, client in ipairs(redis.call('ZRANGEBYSCORE', p.set, '-inf', now, 'LIMIT', 0, PRUNE)) do
    presence_remove(p, client)
  end
  return now
end

-- FCALL <p>_presence 1 <set> <topic> <ttl s> <n> [<client> <user or ''> <entry>]*n [<client to remove>]*
local function presence(keys, args)
  local ttl, n = count(args[2]), count(args[3])
  if not ttl or ttl < 1 or ttl > MAX_TTL or not n or #args < 3 + 3 * n then
    return redis.error_reply('ERR usage: FCALL @PRESENCE@ 1 <key> <topic> <ttl> <n> [client user entry]*n [client]*')
  end
  local p, err = presence_resolve(keys, args[1])
  if not p then
    return redis.error_reply(err)
  end
  local expiry = presence_prune(p) + ttl * 1000
  for i = 4, 3 + 3 * n, 3 do
    local client, user, entry = args[i], args[i + 1], args[i + 2]
    local added = redis.call('ZADD', p.set, expiry, client) == 1
    if not added and redis.call('HGET', p.info, client) ~= entry then
      -- the client listens again with another user or info (an UNLISTEN and a LISTEN in
      -- one batch): a LEAVE of the old entry, a JOIN of the new one
      presence_remove(p, client)
      added = redis.call('ZADD', p.set, expiry, client) == 1
    end
    if added then
      redis.call('HSET', p.info, client, entry)
      if user ~= '' then
        redis.call('HINCRBY', p.users, user, 1)
      end
      presence_event(p, 'join', entry)
    end
  end
  for i = 4 + 3 * n, #args do
    presence_remove(p, args[i])
  end
  for _, key in ipairs({p.set, p.info, p.users}) do
    redis.call('EXPIRE', key, ttl)
  end
  return redis.call('ZCARD', p.set)
end

-- FCALL <p>_presence_get 1 <set> <topic> <limit>
--   -> [connections, users, [entry, ...] or {}, expired entries left to prune]
-- the counts are exact when nothing is left (else call again: each call prunes up to PRUNE)
local function presence_get(keys, args)
  local limit = count(args[2])
  if #args ~= 2 or not limit then
    return redis.error_reply('ERR usage: FCALL @PRESENCE_GET@ 1 <key> <topic> <limit>')
  end
  local p, err = presence_resolve(keys, args[1])
  if not p then
    return redis.error_reply(err)
  end
  local now = presence_prune(p)
  local left = redis.call('ZCOUNT', p.set, '-inf', now)
  local connections = redis.call('ZCARD', p.set)
  local entries = {}
  if left == 0 and limit > 0 and connections <= limit then
    entries = redis.call('HVALS', p.info)
  end
  return {connections, redis.call('HLEN', p.users), entries, left}
end

redis.register_function('@PUBLISH@', publish)
redis.register_function{function_name='@HISTORY@', callback=history, flags={'no-writes'}}
redis.register_function('@PRESENCE@', presence)
redis.register_function('@PRESENCE_GET@', presence_get)
"""


def library_code(channel: str, policy: TopicPolicy, *, sharded: bool = False) -> str:
    """The Lua source of ``channel``'s library (``FUNCTION LOAD`` it), with the sizes and
    ttls of ``policy``'s topic names that keep history baked in (a policy without any gives
    a library whose functions refuse every topic); ``sharded``: for a Redis Cluster, the
    publish function ``SPUBLISH``es on the topic's channel instead of ``PUBLISH``."""
    names = function_names(channel)
    replacements = {
        "@PUBLISH_COMMAND@": "SPUBLISH" if sharded else "PUBLISH",
        "@LIBRARY@": names.library,
        "@PUBLISH@": names.publish,
        "@HISTORY@": names.history,
        "@PRESENCE_GET@": names.presence_get,
        "@PRESENCE_RULES@": _presence_table(policy.rules.values()),
        "@PRESENCE@": names.presence,
        "@CHANNEL@": _lua_string(channel),
        "@CHANNEL_COMMENT@": repr(channel).replace("\n", " "),
        "@POLICY@": _policy_table(policy.rules.values()),
    }
    return re.sub("|".join(map(re.escape, replacements)), lambda m: replacements[m.group(0)], _LIBRARY)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    if isinstance(exc, ResponseError):
        return BrokerUnavailable(f"redis refused: {exc}")
    return BrokerUnavailable(f"redis unavailable: {type(exc).__name__}")


class HistoryFunctions:
    """Calls one channel's library through a ``redis.asyncio`` client; loads it when Redis
    does not have it (a Redis restarted without its data lost its functions too).

    Nothing is retried but a call Redis answered "Function not found" (it did not run).
    """

    __slots__ = ("_channel", "_client", "_code", "names")

    def __init__(
        self, client: aioredis.Redis | RedisCluster, *, channel: str, policy: TopicPolicy, sharded: bool = False
    ) -> None:
        """Args:
        client: the client to call through (its timeouts apply; it must not retry); a
            ``RedisCluster`` routes each call by its key.
        channel: the data channel.
        policy: the topic policy baked into the library.
        sharded: the library ``SPUBLISH``es (Redis Cluster, :func:`library_code`).
        """
        self._client = client
        self._channel = channel
        self._code = library_code(channel, policy, sharded=sharded)
        self.names = function_names(channel)

    async def load(self) -> None:
        """``FUNCTION LOAD REPLACE`` the library (on a Redis Cluster: on every master).

        Loading is idempotent: a failed connection (e.g. a pooled one to a Redis that
        restarted) is retried once, on a new one.

        Raises:
            BrokerUnavailable: Redis did not take it (down, timeout, refused: e.g. older than 7.0).
        """
        for attempt in (1, 2):
            try:
                if isinstance(self._client, RedisCluster):  # every master runs the function of its slots
                    await self._client.execute_command(
                        "FUNCTION LOAD", "REPLACE", self._code, target_nodes=RedisCluster.PRIMARIES
                    )
                else:
                    await self._client.function_load(self._code, replace=True)
                return
            except (RedisConnectionError, OSError) as exc:
                if attempt == 2:
                    raise _unavailable(exc) from None
            except (RedisError, TimeoutError) as exc:
                raise _unavailable(exc) from None

    async def _call(self, function: str, topic: str, *args: str | int, key: str | None = None) -> Any:
        key = history_key(self._channel, topic) if key is None else key
        for attempt in (1, 2):
            try:
                return await self._client.fcall(function, 1, key, topic, *args)
            except ResponseError as exc:
                if attempt == 1 and "function not found" in str(exc).lower():
                    await self.load()
                    continue
                raise _unavailable(exc) from None
            except (RedisError, OSError, TimeoutError) as exc:
                raise _unavailable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(self, topic: str, message: str, rule: TopicRule) -> Position:
        """Append ``message`` to ``topic``'s history and publish it with its position.

        Args:
            topic: the topic (its name must keep history in the library's policy).
            message: the text sent to clients as ``data.message``.
            rule: the topic's rule.

        Returns:
            The publication's offset and epoch.

        Raises:
            NoHistory: ``rule`` keeps no history.
            BrokerUnavailable: Redis did not take it, or refused it (e.g. a policy without
                that topic name); as far as we know it was not published.
        """
        if not rule.has_history:
            raise NoHistory(f"topic name {rule.name!r} keeps no history")
        offset, epoch = await self._call(self.names.publish, topic, message)
        return Position(int(offset), _text(epoch))

    async def read(self, topic: str, since: int, limit: int, rule: TopicRule) -> HistoryPage:
        """The publications of ``topic`` after offset ``since``, oldest first, at most
        ``limit``, and its current position (a topic without one gets a new epoch).

        Raises:
            NoHistory: ``rule`` keeps no history.
            ValueError: ``since`` or ``limit`` is negative.
            BrokerUnavailable: Redis could not be read, or refused the call.
        """
        if not rule.has_history:
            raise NoHistory(f"topic name {rule.name!r} keeps no history")
        if since < 0 or limit < 0:
            raise ValueError("since and limit must be non-negative")
        offset, epoch, first, flat = await self._call(self.names.history, topic, since, limit)
        publications = [Publication(int(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]
        return HistoryPage(publications, int(offset), _text(epoch), int(first))

    async def presence_apply(self, calls: list[tuple[str, list[str | bytes]]]) -> None:
        """Run ``<p>_presence`` once per ``(topic, arguments after the topic)``, pipelined
        (one round trip to one Redis; on a Redis Cluster, one per master). A library Redis
        lost is loaded and the whole pipeline run again (the function is idempotent).

        Raises:
            BrokerUnavailable: Redis failed or refused a call.
        """
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for topic, args in calls:
                pipe.fcall(self.names.presence, 1, presence_key(self._channel, topic), topic, *args)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                raise _unavailable(exc) from None
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                return
            if attempt == 1 and any("function not found" in str(e).lower() for e in errors):
                await self.load()
                continue
            raise _unavailable(errors[0])

    async def presence_get(self, topic: str, limit: int) -> tuple[int, int, list[bytes]]:
        """``<p>_presence_get``: ``(connections, users, entries)`` of ``topic`` after pruning
        its expired entries; ``entries`` only when there are at most ``limit`` (0: none).
        A call prunes at most 1,000 expired entries (their LEAVEs go out with it): while
        some are left (an instance with many listeners died), it is called again, so the
        counts are exact.

        Raises:
            BrokerUnavailable: Redis failed or refused the call.
        """
        key = presence_key(self._channel, topic)
        for _ in range(MAX_PRUNE_ROUNDS):
            connections, users, entries, left = await self._call(self.names.presence_get, topic, limit, key=key)
            if not left:
                break
        return int(connections), int(users), list(entries)
