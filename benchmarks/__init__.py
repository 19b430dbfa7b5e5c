"""Benchmarks of this project: the GPU comparison with pixel-space DDPM and the studies around it (see benchmarks/README.md)."""
