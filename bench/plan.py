"""What a benchmark run measures: the full plan and the ``--quick`` smoke plan."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    """One offered load: ``listeners`` connections over ``topics`` topics, ``rate`` msgs/s."""

    name: str
    listeners: int
    topics: int
    rate: float
    size: int
    duration: float


@dataclass(frozen=True)
class Plan:
    """Every scenario of one run; each list of servers is filtered by what is installed."""

    reps: int
    generators: int
    compare_servers: list[str]
    compare_cases: list[Case]
    sweep_configs: list[tuple[str, int, int]]  # (server, listeners, topics)
    sweep_sizes: list[int]
    sweep_ladder: list[int]  # offered deliveries/s, ascending; stops at the first failure
    sweep_duration: float
    idle_servers: list[str]
    idle_connections: int
    connect_servers: list[str]
    connect_connections: int
    idle_compression: tuple[bool, ...] = (False, True)  # clients offer permessage-deflate: off, on
    notes: list[str] = field(default_factory=list)


ALL = ["ours-memory", "ours-redis", "ours-redis-2w", "python-socketio", "node-socketio"]


def full_plan() -> Plan:
    """The documented run (about 20 minutes on the 2-core machine)."""
    return Plan(
        reps=3,
        generators=2,
        compare_servers=ALL,
        compare_cases=[
            Case("light: 500 listeners x 20 msg/s", 500, 1, 20, 200, 5),
            Case("heavy: 50 listeners x 1000 msg/s", 50, 1, 1000, 200, 4),
            # remote control: each publication reaches one device, so cost is per publication
            Case("sparse: 1000 listeners over 1000 topics x 100 msg/s", 1000, 1000, 100, 200, 8),
        ],
        sweep_configs=[
            ("ours-memory", 1000, 1),  # the target shape: memory broker, N = 1,000, via POST /publish
            ("ours-redis", 1000, 1),
            ("ours-redis", 5000, 1),
            ("ours-redis", 10000, 1),
            ("ours-redis", 10000, 1000),
            ("ours-redis-2w", 10000, 1),
        ],
        sweep_sizes=[200, 2048],
        sweep_ladder=[10_000, 25_000, 50_000, 100_000, 200_000, 400_000, 800_000],
        sweep_duration=3,
        idle_servers=["ours-memory", "python-socketio", "node-socketio"],
        idle_connections=10_000,
        connect_servers=["ours-redis", "ours-redis-2w", "python-socketio", "node-socketio"],
        connect_connections=3000,
    )


def quick_plan() -> Plan:
    """A smoke run with tiny sizes (well under 2 minutes)."""
    return Plan(
        reps=1,
        generators=2,
        compare_servers=ALL,
        compare_cases=[
            Case("light: 50 listeners x 50 msg/s", 50, 1, 50, 200, 1),
            Case("topics: 100 listeners over 10 topics x 200 msg/s", 100, 10, 200, 2048, 1),
        ],
        sweep_configs=[("ours-redis", 200, 1)],
        sweep_sizes=[200],
        sweep_ladder=[10_000],
        sweep_duration=1,
        idle_servers=["ours-memory"],
        idle_connections=200,
        connect_servers=["ours-redis"],
        connect_connections=100,
    )
