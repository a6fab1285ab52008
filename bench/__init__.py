"""Benchmarks (not tests): they start the real server and simulator as processes on
127.0.0.1 and print figures. ``python -m bench.push_latency --clients 200``."""
