# The model store and rollout controller. Build from the repository root:
#   docker build -f deploy/docker/store.Dockerfile -t edgefabric-store:0.1.0 .
FROM python:3.11-slim-bookworm

# The store loads every pushed model in ONNX Runtime to derive its contract: the CPU wheel.
ARG ORT_EXTRA=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEFABRIC_HOME=/var/lib/edgefabric

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
# No HEALTHCHECK: by default the store listens on no port (it is an MQTT client); the
# broker connection is its liveness (it exits when it cannot serve).
ENTRYPOINT ["edgefabric"]
CMD ["store", "serve", "--home", "/var/lib/edgefabric", "--broker", "mqtt://mosquitto:1883"]
