"""The gateway: the fabric's front door speaking KServe v2 over gRPC.

Import :class:`gateway.app.Gateway` and :class:`gateway.settings.GatewaySettings` from their
modules; this package imports nothing eagerly, so ``edgefabric`` commands that do not serve
start fast.
"""
