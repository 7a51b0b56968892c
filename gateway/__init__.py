"""The gateway: the fabric's front door speaking KServe v2 over gRPC."""

from gateway.app import Gateway
from gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings"]
