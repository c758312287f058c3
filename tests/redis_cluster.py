"""A real Redis Cluster on loopback for tests: ``LocalCluster`` starts N masters with R
replicas each (``redis-server --cluster-enabled yes`` on free ports, then ``redis-cli
--cluster create``), kills nodes, waits for failovers, moves slots, and stops it all by PID.

Every wait is bounded (``ClusterTimeout`` says what it waited for and the cluster's view);
nothing touches the shared Redis at 6379.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis

from realtime.redis_cluster import Address, SlotMap, key_slot

HOST = "127.0.0.1"
BUS_OFFSET = 10000  # the cluster bus listens on port + 10000
T = TypeVar("T")


class ClusterTimeout(AssertionError):
    """The cluster did not reach the awaited state in time."""


class _NodeExited(RuntimeError):
    """A node's process exited while the cluster was starting."""


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    taken: set[int] = set()  # every chosen port and bus port: no node's port may be another's bus
    for _ in range(2000):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        bus = port + BUS_OFFSET
        if bus < 65536 and not {port, bus} & taken and _bindable(bus):
            ports.append(port)
            taken.update((port, bus))
            if len(ports) == count:
                return ports
    raise RuntimeError(f"found only {len(ports)} of {count} free port pairs (port, port + 10000)")


def cluster_tools() -> tuple[str, str] | None:
    """The paths of ``redis-server`` and ``redis-cli``, or ``None`` if either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


class LocalCluster:
    """A Redis Cluster of ``masters`` x (1 + ``replicas``) ``redis-server`` processes in ``workdir``.

    Args:
        workdir: where node configs, logs and dumps go (a test's ``tmp_path``).
        masters: number of masters (at least 3: ``redis-cli --cluster create`` refuses fewer).
        replicas: replicas per master.
        node_timeout_ms: ``cluster-node-timeout``: how long a node is unreachable before it
            is failed (a failover takes about this plus 0.5-1.5 s of election).
        form_timeout: seconds ``start`` may take before it raises ``ClusterTimeout``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        form_timeout: float = 20,
    ) -> None:
        tools = cluster_tools()
        if tools is None:
            raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
        self.server_bin, self.cli_bin = tools
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.n_masters, self.n_replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.form_timeout = form_timeout
        self.ports = free_cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.formation_seconds = 0.0
        self._replicas_of: dict[int, list[int]] = {}  # a killed master's replicas

    # -- life ---------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> LocalCluster:
        """Start every node, create the cluster and wait until it is ``ok`` everywhere; on
        any failure every node started is killed before the error propagates.

        A node that exits at start (another process took its port or bus port between our
        check and its bind) makes it retry on fresh ports, up to ``attempts`` times.

        Raises:
            ClusterTimeout: the cluster did not form within ``form_timeout`` seconds.
        """
        try:
            return self._start(attempts)
        except subprocess.TimeoutExpired as error:
            message = f"not within {self.form_timeout:.1f} s: {' '.join(map(str, error.cmd))}\n{self._describe()}"
            self.stop()
            raise ClusterTimeout(message) from error
        except BaseException:
            self.stop()
            raise

    def _start(self, attempts: int) -> LocalCluster:
        began = time.monotonic()
        deadline = began + self.form_timeout
        for attempt in range(attempts):
            for port in self.ports:
                self._spawn(port)
            try:
                self._wait(self._all_listening, "every node answers PING", deadline - time.monotonic())
                break
            except _NodeExited:
                self.stop()
                if attempt == attempts - 1:
                    raise
                self.procs.clear()
                self.ports = free_cluster_ports(len(self.ports))
        create = subprocess.run(
            [self.cli_bin, "--cluster", "create", *self.seeds, "--cluster-replicas", str(self.n_replicas), "--cluster-yes"],
            capture_output=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout.decode()}{create.stderr.decode()}")
        self.wait_ok(self.ports, timeout=max(1.0, deadline - time.monotonic()))
        self.formation_seconds = time.monotonic() - began
        return self

    def _all_listening(self) -> bool:
        exited = [port for port, proc in self.procs.items() if proc.poll() is not None]
        if exited:
            raise _NodeExited(f"redis-server exited at start on {exited}\n{self._describe()}")
        return all(self._pings(p) for p in self.ports)

    def _spawn(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [self.server_bin, "--port", str(port), "--bind", HOST, "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--repl-diskless-sync-delay", "0",
             "--logfile", f"redis-{port}.log", "--daemonize", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        """SIGKILL every node this cluster started and remove its files."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for port in self.ports:
            for name in (f"nodes-{port}.conf", f"redis-{port}.log"):
                (self.workdir / name).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading the cluster ------------------------------------------------------------

    @property
    def seeds(self) -> list[str]:
        """Every node as ``127.0.0.1:port``."""
        return [f"{HOST}:{port}" for port in self.ports]

    def alive(self) -> list[int]:
        """The ports of the nodes whose process runs."""
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client on one node; the caller closes it."""
        return redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=2)

    def call(self, port: int, *args: Any) -> Any:
        """One command on one node."""
        with self.client(port) as node:
            return node.execute_command(*args)

    def shards_reply(self, port: int | None = None) -> Any:
        """The raw ``CLUSTER SHARDS`` reply of ``port`` (default: the first live node)."""
        return self.call(port if port is not None else self.alive()[0], "CLUSTER", "SHARDS")

    def slot_map(self, port: int | None = None) -> SlotMap:
        """The slot map as ``port`` (default: the first live node) sees it."""
        return SlotMap.from_shards(self.shards_reply(port))

    def masters(self) -> list[int]:
        """The ports of the masters that own slots, as the first live node sees it."""
        return sorted(a.port for a in self.slot_map().masters())

    def replicas(self, master: int | None = None) -> list[int]:
        """The ports of the replicas (of ``master``, or all), as the first live node sees it."""
        view = self.slot_map()
        masters = [Address(HOST, master)] if master is not None else list(view.masters())
        return sorted(r.port for m in masters for r in view.replicas(m))

    def info(self, port: int, section: str) -> dict[str, str]:
        """``INFO <section>`` or ``CLUSTER INFO`` (``section="cluster"``) as a dict of strings."""
        raw = self.call(port, "CLUSTER", "INFO") if section == "cluster" else self.call(port, "INFO", section)
        if isinstance(raw, dict):  # redis-py parses INFO (and CLUSTER INFO) replies itself
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    # -- waiting ------------------------------------------------------------------------

    def _pings(self, port: int) -> bool:
        """True when the node on ``port`` answers and is ours (its PID is the one we started,
        not another test's server that took the port first)."""
        try:
            info = self.call(port, "INFO", "server")
        except redis.RedisError:
            return False
        return bool(info.get("process_id") == self.procs[port].pid)

    def _wait(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise ClusterTimeout(f"not within {timeout:.1f} s: {what}\n{self._describe()}")
            time.sleep(0.05)

    def _describe(self) -> str:
        lines = []
        for port in self.alive():
            try:
                nodes = self.call(port, "CLUSTER", "NODES")
                lines.append(f"-- {port}: {self.info(port, 'cluster').get('cluster_state')}\n{nodes.decode()}")
            except redis.RedisError as error:
                lines.append(f"-- {port}: {error}")
        for port in self.ports:
            log = self.workdir / f"redis-{port}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-8:]
                lines.append(f"-- log of {port}:\n" + "\n".join(tail))
        return "\n".join(lines)

    def _healthy(self, port: int, nodes: int) -> bool:
        info = self.info(port, "cluster")
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_ok") == "16384"
            and int(info.get("cluster_known_nodes", 0)) >= nodes
        )

    def _replicas_linked(self) -> bool:
        for port in self.alive():
            repl = self.info(port, "replication")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return False
        return True

    def _agree(self, ports: list[int]) -> bool:
        views = [self.slot_map(p) for p in ports]
        return all(v == views[0] for v in views) and views[0].covered()

    def wait_ok(self, ports: list[int] | None = None, timeout: float = 20) -> None:
        """Until every node in ``ports`` (default: all live) says ``cluster_state:ok`` with
        all 16384 slots ok, all agree on the slot map, and every replica's link is up."""
        ports = ports if ports is not None else self.alive()
        self._wait(
            lambda: (
                all(self._healthy(p, len(self.ports)) for p in ports) and self._agree(ports) and self._replicas_linked()
            ),
            "cluster_state:ok, every slot covered, one slot map, replicas linked",
            timeout,
        )

    # -- faults and topology changes ----------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (by the PID this harness started); a master's
        replicas are noted first, for ``wait_failover``."""
        with contextlib.suppress(redis.RedisError, IndexError):
            self._replicas_of[port] = self.replicas(port)
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def wait_failover(self, old_master: int, timeout: float = 20) -> int:
        """Until a replica of ``old_master`` (killed with ``kill``) is master of its slots on
        every live node's view and the cluster is ``ok`` again.

        Returns:
            The port of the new master.

        Raises:
            ClusterTimeout: not within ``timeout`` seconds.
        """
        old = Address(HOST, old_master)
        replicas = self._replicas_of.get(old_master) or self.replicas(old_master)
        if not replicas:
            raise RuntimeError(f"{old_master} has no replica to fail over to")
        found: list[int] = []

        def promoted() -> bool:
            masters = self.slot_map().masters()
            found[:] = [r for r in replicas if Address(HOST, r) in masters]
            return bool(found) and old not in masters

        self._wait(promoted, f"a replica of {old_master} ({replicas}) is master", timeout)
        self.wait_ok(timeout=timeout)
        return found[0]

    def manual_failover(self, replica: int, timeout: float = 20) -> None:
        """``CLUSTER FAILOVER`` on ``replica`` (its master steps down, nothing is lost), then
        wait until every live node sees it as master and the cluster is ok."""
        self.call(replica, "CLUSTER", "FAILOVER")
        self._wait(
            lambda: all(Address(HOST, replica) in self.slot_map(p).masters() for p in self.alive()),
            f"{replica} is master on every node's view",
            timeout,
        )
        self.wait_ok(timeout=timeout)

    def node_id(self, port: int) -> str:
        raw = self.call(port, "CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def move_slot(self, slot: int, to_master: int, timeout: float = 20) -> None:
        """Move ``slot`` and its keys to the master on ``to_master`` (see ``move_slots``)."""
        self.move_slots([slot], to_master, timeout)

    def move_slots(self, slots: Iterable[int], to_master: int, timeout: float = 20) -> None:
        """Move each slot (a ``range`` will do) and its keys to the master on ``to_master``
        with the commands ``redis-cli --cluster reshard`` sends (``SETSLOT IMPORTING`` and
        ``MIGRATING``, ``MIGRATE`` the keys, ``SETSLOT NODE`` on both ends and every other
        master), then wait until every live node sees the new owner and the cluster is ok."""
        slots = list(slots)
        dst_id = self.node_id(to_master)
        for slot in slots:
            source = self.slot_map().master_for(slot).port
            if source != to_master:
                self._migrate(slot, source, to_master, dst_id)
        self._wait(
            lambda: all(self.slot_map(p).master_for(s).port == to_master for p in self.alive() for s in slots),
            f"every node sees slots {slots[0]}..{slots[-1]} on {to_master}",
            timeout,
        )
        self.wait_ok(timeout=timeout)

    def _migrate(self, slot: int, source: int, target: int, target_id: str) -> None:
        self.call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := self.call(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.call(source, "MIGRATE", HOST, target, "", 0, 5000, "KEYS", *keys)
        for port in [target, source, *(m for m in self.masters() if m not in (source, target))]:
            self.call(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def move_slot_of(self, name: str | bytes, to_master: int) -> int:
        """Move the slot of a key or channel (see ``move_slot``); returns the slot."""
        slot = key_slot(name)
        self.move_slot(slot, to_master)
        return slot

    def reshard(self, from_master: int, to_master: int, slots: int, timeout: float = 30) -> None:
        """Move ``slots`` slots from one master to another with ``redis-cli --cluster
        reshard`` (which slots: redis-cli's choice), then wait until the cluster is ok."""
        result = subprocess.run(
            [self.cli_bin, "--cluster", "reshard", f"{HOST}:{from_master}",
             "--cluster-from", self.node_id(from_master), "--cluster-to", self.node_id(to_master),
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed: {result.stdout.decode()}{result.stderr.decode()}")
        self.wait_ok(timeout=timeout)


@contextlib.contextmanager
def local_cluster(workdir: Path, **options: Any) -> Iterator[LocalCluster]:
    """A started ``LocalCluster`` that is stopped on exit, even when it fails to form."""
    cluster = LocalCluster(workdir, **options)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
