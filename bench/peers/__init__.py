"""Peer servers (Seldon MLServer, Triton) for side-by-side benchmarks; see launch.py."""
