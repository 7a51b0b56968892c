"""Pools: the places a request can be served.

- :mod:`gateway.pools.base` — :class:`Pool`, what the router needs from any pool.
- :mod:`gateway.pools.remote` — a remote KServe v2 server (Triton, MLServer, another gateway).
- :mod:`gateway.pools.edge` — edge agents behind an MQTT broker, requests relayed over it.

Import from the modules; this package imports nothing eagerly.
"""
