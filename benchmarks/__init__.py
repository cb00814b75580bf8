"""Benchmarks: the `fermtl benchmark` protocols and the scripts that print speed and accuracy figures."""
