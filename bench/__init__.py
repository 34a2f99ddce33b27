"""Benchmark harness: named scenarios, warm-up + repeats, medians, JSON results.

Run ``python -m bench --help``. Each repeat runs in a fresh child process, so its peak RSS
is its own and one scenario's caches cannot flatter the next.
"""
