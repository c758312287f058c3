"""Benchmark harness: fan-out throughput, latency, CPU per delivery, memory, setup rate.

Not part of the server: it starts servers (ours and the peers) as separate processes
and drives them from load-generator processes. Run ``python -m bench --quick`` or see
docs/benchmarks.md.
"""
