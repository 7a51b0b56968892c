"""Pools: the places a request can be served.

- :mod:`gateway.pools.remote` — a remote KServe v2 server (Triton, MLServer, another gateway).

Import from the modules; this package imports nothing eagerly.
"""
