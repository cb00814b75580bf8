"""Benchmarks and evaluation set-ups of fer-mtl (run as scripts from the repository root)."""
