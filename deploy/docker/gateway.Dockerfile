# The KServe v2 gateway. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t edgefabric-gateway:0.1.0 .
#   docker build -f deploy/docker/gateway.Dockerfile --build-arg ORT_EXTRA=gpu \
#       -t edgefabric-gateway:0.1.0-gpu .      # onnxruntime-gpu (CUDA libraries on the host)
FROM python:3.11-slim-bookworm

# cpu -> onnxruntime, gpu -> onnxruntime-gpu (the two wheels overwrite each other: one only).
ARG ORT_EXTRA=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 edgefabric \
    && useradd --system --uid 10001 --gid edgefabric --home-dir /var/lib/edgefabric \
       --create-home --shell /usr/sbin/nologin edgefabric \
    && install -d -o edgefabric -g edgefabric /models /trust

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgefabric ./edgefabric
COPY gateway ./gateway
COPY edge_agent ./edge_agent
COPY model_store ./model_store
RUN pip install ".[${ORT_EXTRA}]" && rm -rf /src

WORKDIR /var/lib/edgefabric
USER 10001:10001
EXPOSE 8001 8002
# The gateway's grpc.health.v1 service: SERVING once the repository is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel('127.0.0.1:8001'); r = g.HealthStub(c).Check(h.HealthCheckRequest(service='inference.GRPCInferenceService'), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["edgefabric"]
# Loopback unless told otherwise: a deployment chooses its exposure (TLS or --insecure behind a
# proxy, --auth required or --allow-anonymous) in its own command; see deploy/compose.yaml.
CMD ["gateway", "serve", "--model-repository", "/models", "--grpc-port", "8001", "--metrics-port", "8002"]
