"""Redis Cluster mode (issue 17): three in-process instances on a real 3-master/3-replica
cluster (the ``redis_cluster`` fixture), ``REDIS_CLUSTER_NODES`` set: sharded per-topic
channels, one subscriber link per master, the control channel on classic pub/sub."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse
from redis.asyncio.cluster import RedisCluster

from http_api.appkeys import NODE
from realtime.redis_cluster import key_slot
from realtime.redis_cluster_broker import ClusterBroker
from realtime.redis_functions import history_key, topic_channel
from tests.conftest import (
    PUBLISHER_KEY,
    USER_KEY,
    AppFactory,
    assert_silent,
    auth,
    listen,
    recv,
    send,
    wait_for,
    ws_token,
)
from tests.redis_cluster import LocalCluster
from topics import DEFAULT_POLICY

HISTORY_TOPIC = "remote-control:command.7"  # keeps history (the default policy), needs user 7's token


def broker_of(client: Any) -> ClusterBroker:
    broker = client.app[NODE].broker
    assert isinstance(broker, ClusterBroker)
    return broker


async def instances(make_client: AppFactory, cluster: LocalCluster, count: int = 3) -> list[Any]:
    nodes = ",".join(cluster.seeds[:2])  # two seeds are enough: the rest is discovered
    apps = [await make_client(redis_cluster_nodes=nodes, redis_probe_interval=0, listen_rate=0) for _ in range(count)]
    for app in apps:
        await wait_for(lambda app=app: broker_of(app).ready)
    return apps


def shardnumsub(cluster: LocalCluster, topic: str) -> int:
    """``PUBSUB SHARDNUMSUB`` of the topic's channel on the master that owns its slot."""
    channel = topic_channel("realtime", topic)
    owner = cluster.slot_map().master_for_key(channel).port
    reply = cluster.call(owner, "PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


async def publish(app: Any, topic: str, message: str) -> None:
    resp = await app.post("/publish", json={"topic": topic, "message": message}, headers=auth(PUBLISHER_KEY))
    assert resp.status == 202, await resp.text()


async def messages(ws: ClientWebSocketResponse, count: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(count):
        frame = await recv(ws)
        assert frame["type"] == "MESSAGE", frame
        out.append((frame["data"]["topic"], frame["data"]["message"]))
    return out


async def test_exactly_once_in_order_per_topic_across_instances(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    apps = await instances(make_client, redis_cluster)
    topics = [f"channel:update.k{i}" for i in range(6)]
    masters = {redis_cluster.slot_map().master_for_key(topic_channel("realtime", t)) for t in topics}
    assert len(masters) >= 2  # the topics span several masters (several links per instance)
    sockets = [await app.ws_connect("/ws") for app in apps]
    try:
        for app, ws in zip(apps, sockets, strict=True):
            assert (await listen(ws, [*topics, HISTORY_TOPIC], await ws_token(app)))["error"] == ""
        sent = []
        for n in range(10):
            for i, topic in enumerate([*topics, HISTORY_TOPIC]):
                await publish(apps[(n + i) % 3], topic, f"{n}")  # through each instance in turn
                sent.append((topic, f"{n}"))
        for ws in sockets:
            got = await messages(ws, len(sent))
            for topic in [*topics, HISTORY_TOPIC]:
                assert [m for t, m in got if t == topic] == [str(n) for n in range(10)]
            await assert_silent(ws)
    finally:
        for ws in sockets:
            await ws.close()


async def test_an_instance_receives_nothing_for_topics_it_does_not_listen_to(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    a, b, c = await instances(make_client, redis_cluster)
    x, y, z = "channel:update.x", "channel:update.y", "channel:update.z"
    async with a.ws_connect("/ws") as on_a, b.ws_connect("/ws") as on_b:
        assert (await listen(on_a, [x]))["error"] == ""
        assert (await listen(on_b, [y]))["error"] == ""
        assert (shardnumsub(redis_cluster, x), shardnumsub(redis_cluster, y), shardnumsub(redis_cluster, z)) == (
            1,
            1,
            0,
        )
        for topic in (x, y, z) * 10:
            await publish(c, topic, "m")
        for ws in (on_a, on_b):
            assert len(await messages(ws, 10)) == 10
            await assert_silent(ws)
        assert broker_of(a).stats.received == 10  # x only
        assert broker_of(b).stats.received == 10  # y only
        assert broker_of(c).stats.received == 0  # no listener at all
        await send(on_a, type="UNLISTEN", nonce="u", data={"topics": [x]})
        assert (await recv(on_a))["error"] == ""
        await wait_for(lambda: shardnumsub(redis_cluster, x) == 0)


async def test_a_publication_right_after_the_response_is_always_delivered(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    (app,) = await instances(make_client, redis_cluster, 1)
    raw = RedisCluster(host="127.0.0.1", port=redis_cluster.masters()[0])
    try:
        async with app.ws_connect("/ws") as ws:
            for n in range(30):
                topic = f"channel:update.seam{n}"
                await send(ws, type="LISTEN", nonce=f"n{n}", data={"topics": [topic]})
                assert await recv(ws) == {"type": "RESPONSE", "nonce": f"n{n}", "error": ""}
                envelope = orjson.dumps({"topic": topic, "message": str(n)})
                assert await raw.spublish(topic_channel("realtime", topic), envelope) == 1
                assert (await recv(ws))["data"] == {"topic": topic, "message": str(n)}
    finally:
        await raw.aclose()


async def test_a_revocation_reaches_clients_on_every_instance(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    apps = await instances(make_client, redis_cluster)
    sockets = [await app.ws_connect("/ws") for app in apps]
    try:
        for app, ws in zip(apps, sockets, strict=True):
            assert (await listen(ws, [HISTORY_TOPIC], await ws_token(app)))["error"] == ""
        resp = await apps[0].post("/auth/ws/revoke", json={"sub": "7"}, headers=auth(USER_KEY))
        assert resp.status == 202, await resp.text()
        for ws in sockets:
            assert await recv(ws) == {"type": "AUTH_REVOKED", "data": {"topics": [HISTORY_TOPIC]}}
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_killed_master_is_followed_and_its_topics_recovered_from_history(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    """The master of the history topic's slot is killed: its replica takes over, every
    instance moves the topic's subscription there and catches its listeners up from
    history (what was published on the replica after the failover); nobody is disconnected."""
    apps = await instances(make_client, redis_cluster)
    old = redis_cluster.slot_map().master_for_key(topic_channel("realtime", HISTORY_TOPIC)).port
    assert all(broker_of(app).classic_node.port != old for app in apps)  # the other test kills that one
    await kill_and_recover(apps, redis_cluster, HISTORY_TOPIC, [await ws_token(app) for app in apps])


async def test_a_killed_master_carrying_the_control_link_is_followed_too(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    """As above, the killed master also carrying every instance's classic link (the control
    channel and the firehose): the instances are not ready until they reconnect it, catch
    every topic up, and recover the history topic's publication without a GAP."""
    apps = await instances(make_client, redis_cluster)
    classic = broker_of(apps[0]).classic_node
    assert all(broker_of(app).classic_node == classic for app in apps)
    view = redis_cluster.slot_map()
    topic = next(
        t for i in range(1000) if view.master_for_key(topic_channel("realtime", t := f"dream:update.k{i}")) == classic
    )
    await kill_and_recover(apps, redis_cluster, topic, [None] * len(apps))


async def kill_and_recover(apps: list[Any], cluster: LocalCluster, topic: str, tokens: list[str | None]) -> None:
    """Listen to ``topic`` (with history) on every instance, SIGKILL the master of its slot,
    publish on the promoted replica: every listener gets exactly that publication (from
    history, or live), no GAP, then the live stream."""
    sockets = [await app.ws_connect("/ws") for app in apps]
    try:
        for ws, token in zip(sockets, tokens, strict=True):
            assert (await listen(ws, [topic], token))["error"] == ""
        await publish(apps[0], topic, "before")
        for ws in sockets:
            assert (await messages(ws, 1)) == [(topic, "before")]
        old = cluster.slot_map().master_for_key(topic_channel("realtime", topic)).port
        # replication is asynchronous: a publication the replica lacks would be lost with the
        # master, and its offset reused (not what is tested here)
        await wait_for(lambda: replicated(cluster, old))
        await asyncio.to_thread(cluster.kill, old)
        await asyncio.to_thread(cluster.wait_failover, old)
        raw = RedisCluster(host="127.0.0.1", port=cluster.masters()[0])
        try:  # published on the new master before the instances resubscribe (or after: either way)
            await raw.fcall("realtime_publish", 1, history_key("realtime", topic), topic, "after")  # type: ignore[arg-type]
        finally:
            await raw.aclose()
        for ws in sockets:  # recovered from history (or live): exactly the missed one, no GAP
            frame = await recv(ws, timeout=15)
            assert (frame["type"], frame["data"]["message"]) == ("MESSAGE", "after"), frame
            await assert_silent(ws)
        await publish(apps[1], topic, "live")
        for ws in sockets:
            assert (await messages(ws, 1)) == [(topic, "live")]
    finally:
        for ws in sockets:
            await ws.close()


def replicated(cluster: LocalCluster, master: int) -> bool:
    """Every replica of ``master`` has applied all it wrote (nothing is lost by killing it)."""
    offset = cluster.info(master, "replication")["master_repl_offset"]
    return all(cluster.info(r, "replication").get("slave_repl_offset") == offset for r in cluster.replicas(master))


async def test_a_history_read_of_a_killed_masters_topic_waits_for_the_failover(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    """Read right after the master of the topic's slot is SIGKILLed: the read waits (bounded)
    until the instance follows the promoted replica, and answers from it."""
    (app,) = await instances(make_client, redis_cluster, 1)
    broker = broker_of(app)
    _, rule = DEFAULT_POLICY.check(HISTORY_TOPIC)
    await publish(app, HISTORY_TOPIC, "kept")
    old = redis_cluster.slot_map().master_for_key(topic_channel("realtime", HISTORY_TOPIC)).port
    await wait_for(lambda: replicated(redis_cluster, old))
    await asyncio.to_thread(redis_cluster.kill, old)
    began = asyncio.get_running_loop().time()
    page = await broker.history(HISTORY_TOPIC, since=0, limit=10, rule=rule)
    assert [p.message for p in page.publications] == ["kept"]
    assert asyncio.get_running_loop().time() - began < 10
    await publish(app, HISTORY_TOPIC, "on the new master")  # the instance follows it


async def test_a_moved_slot_is_followed(make_client: AppFactory, redis_cluster: LocalCluster) -> None:
    """The slot of a topic moves to another master: Redis pushes ``sunsubscribe``, each
    instance resubscribes on the new owner, and live publications arrive again."""
    apps = await instances(make_client, redis_cluster)
    topic = "channel:update.mv"
    channel = topic_channel("realtime", topic)
    old = redis_cluster.slot_map().master_for_key(channel).port
    target = next(m for m in redis_cluster.masters() if m != old)
    sockets = [await app.ws_connect("/ws") for app in apps]
    try:
        for ws in sockets:
            assert (await listen(ws, [topic]))["error"] == ""
        await asyncio.to_thread(redis_cluster.move_slot_of, channel, target)
        assert redis_cluster.slot_map().master_for(key_slot(channel)).port == target
        await wait_for(lambda: shardnumsub(redis_cluster, topic) == 3, timeout=10)
        for ws in sockets:  # a topic without history: its listeners are told of the gap
            frame = await recv(ws)
            assert frame["type"] == "GAP", frame
        await publish(apps[2], topic, "moved")
        for ws in sockets:
            assert (await messages(ws, 1)) == [(topic, "moved")]
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_moved_reply_to_one_ssubscribe_moves_that_slot_only(
    make_client: AppFactory, redis_cluster: LocalCluster
) -> None:
    """A slot none of the instance's topics uses moves (no ``sunsubscribe`` is pushed: the
    instance's map is stale); a LISTEN on it sends ``SSUBSCRIBE`` to the old owner, which
    answers ``MOVED``. Only that slot's topic moves: the master's link stays up and its other
    listeners hear nothing of it."""
    (app,) = await instances(make_client, redis_cluster, 1)
    broker = broker_of(app)
    stay = "channel:update.stay"
    old = redis_cluster.slot_map().master_for_key(topic_channel("realtime", stay))
    moving = next(
        t
        for i in range(1000)
        if (t := f"channel:update.moving{i}")
        and redis_cluster.slot_map().master_for_key(topic_channel("realtime", t)) == old
        and key_slot(topic_channel("realtime", t)) != key_slot(topic_channel("realtime", stay))
    )
    target = next(m for m in redis_cluster.masters() if m != old.port)
    async with app.ws_connect("/ws") as first, app.ws_connect("/ws") as second:
        assert (await listen(first, [stay]))["error"] == ""
        link = broker._topics.shards[old]
        await asyncio.to_thread(redis_cluster.move_slot_of, topic_channel("realtime", moving), target)
        assert (await listen(second, [moving]))["error"] == ""  # answered once subscribed on the new owner
        await wait_for(lambda: shardnumsub(redis_cluster, moving) == 1)
        await publish(app, moving, "m")
        await publish(app, stay, "s")
        assert await messages(second, 1) == [(moving, "m")]
        assert await messages(first, 1) == [(stay, "s")]  # no GAP before it: its link was kept
        assert broker._topics.shards[old] is link and not link.link.lost.done()
        await assert_silent(first)
        await assert_silent(second)
