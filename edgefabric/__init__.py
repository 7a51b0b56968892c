"""edgefabric: an edge-to-cloud inference serving fabric speaking KServe v2."""

__version__ = "0.1.0"

__all__ = ["__version__"]
