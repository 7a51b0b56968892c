# The edge agent, for devices that run containers. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t edgefabric-agent:0.1.0 .
#   docker build -f deploy/docker/agent.Dockerfile --build-arg ORT_EXTRA=gpu \
#       -t edgefabric-agent:0.1.0-gpu .
FROM python:3.11-slim-bookworm

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
VOLUME ["/var/lib/edgefabric"]
USER 10001:10001
EXPOSE 8101
# The agent's local KServe v2 server answers grpc.health.v1 like the gateway.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel('127.0.0.1:8101'); r = g.HealthStub(c).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["edgefabric"]
# Settings come from EDGEFABRIC_AGENT_* (device id, broker, trust root, desired key).
# The local KServe v2 API stays on loopback (applications on the device, or the gateway's MQTT
# relay); bind another address only with --tls-cert/--tls-key.
CMD ["agent", "run", "--data-dir", "/var/lib/edgefabric"]
