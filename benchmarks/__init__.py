"""The GPU benchmark of issue 4: see benchmarks/README.md and benchmarks/run_benchmark.py."""
