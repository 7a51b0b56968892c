"""gRPC security: TLS and mutual TLS, bearer tokens with roles, per-tenant limits.

tls       certificate files -> gRPC server/channel credentials; loopback-only plaintext
tokens    hashed bearer tokens with roles (infer per model pattern, admin) and tenants
limits    sans-I/O token buckets and concurrency quotas per tenant (injected clock)
access    the server interceptor and the per-call checks the servicer makes
audit     where admin actions are recorded (the store's hash-chained log, when present)
"""

__all__: list[str] = []
