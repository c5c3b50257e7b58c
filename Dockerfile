# newsmon: one image for every stage (`docker run newsmon:local stage poll --bus kafka://…`).
#
#   docker build -t newsmon:local .            # or: docker compose build
#
# Two stages: `builder` turns newsmon and its pinned dependencies (deploy/constraints.txt)
# into wheels; `runtime` installs those wheels only (no index, no compiler) and runs as a
# non-root user. Every runtime dependency has a binary wheel for linux/amd64 and linux/arm64
# (langdetect is pure Python, built from its sdist), so neither stage needs apt-get.
# Both stages use the same base (same Python ABI for the wheels). To pin it further, append the
# digest on both FROM lines: python:3.11-slim-bookworm@sha256:…

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the pins change, not on every code change.
COPY deploy/constraints.txt /src/deploy/constraints.txt
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels --requirement deploy/constraints.txt
# Then newsmon itself (.dockerignore lets in only what the wheel and the image need).
COPY . /src
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels --constraint deploy/constraints.txt .

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="newsmon" \
      org.opencontainers.image.description="Streaming news monitoring: one pipeline stage per container" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NEWSMON_DATA_DIR=/data \
    NEWSMON_CONFIG_DIR=/config \
    NEWSMON_METRICS_ADDR=0.0.0.0:9100
# Wheels only: --no-index, so nothing is resolved from the network and nothing is compiled here.
# The wheels are bind-mounted from the builder (BuildKit), so they never land in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index /wheels/*.whl \
    && groupadd --system --gid 10001 newsmon \
    && useradd --system --no-log-init --uid 10001 --gid newsmon --home-dir /home/newsmon --create-home \
       --shell /usr/sbin/nologin newsmon \
    && mkdir -p /data \
    && chown newsmon:newsmon /data
# Default configuration, read-only for the service user; operators mount their own on /config.
COPY config/ /config/
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 9100
# /healthz answers 200 while the stage runs (readiness, bus and sink reachable, is /readyz).
# Python rather than curl, which the slim image does not have; the port follows NEWSMON_METRICS_ADDR.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('NEWSMON_METRICS_ADDR', '0.0.0.0:9100').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)"]
ENTRYPOINT ["newsmon"]
CMD ["stage", "index"]
