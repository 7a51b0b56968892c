"""KServe v2 (Open Inference Protocol): datatypes, tensor codecs, converters, gRPC service."""
