# syntax=docker/dockerfile:1
# The routing worker (`llmroute`), as a non-root process in a slim image.
#
#   docker build -t llmroute:dev .                                      # mount a router at run time
#   docker build -t llmroute:dev --build-context router=.demo/router .  # bake a router in
#   docker run --rm -v $PWD/worker.toml:/etc/llmroute/worker.toml:ro llmroute:dev
#
# The worker reads /etc/llmroute/worker.toml (see deploy/config/worker.example.toml); its
# `[router] artifact` should be /opt/llmroute/router, where a baked-in router lives and where
# one can be mounted read-only instead.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a venv with the package
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/llmroute/venv
COPY pyproject.toml README.md ./
COPY routers ./routers
COPY schemas ./schemas
COPY worker ./worker
# every dependency ships manylinux wheels: nothing is compiled, and pip leaves the venv after use
RUN /opt/llmroute/venv/bin/pip install --only-binary=:all: --no-compile . \
    && /opt/llmroute/venv/bin/python -m compileall -q /opt/llmroute/venv/lib \
    && /opt/llmroute/venv/bin/python -m pip uninstall -y pip

# ---------------------------------------------------------------- the router artifact
# Empty unless replaced with `--build-context router=DIR` (a folder written by `llmroute train`).
FROM scratch AS router

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="llmroute" \
      org.opencontainers.image.description="Kafka consumer-group worker routing LLM requests to the cheapest adequate model" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 llmroute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llmroute
COPY --from=build /opt/llmroute/venv /opt/llmroute/venv
COPY --from=router / /opt/llmroute/router/
COPY deploy/config/worker.example.toml /etc/llmroute/worker.example.toml
ENV PATH=/opt/llmroute/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/llmroute
USER 10001:10001
# /metrics, /healthz, /readyz ([metrics] port; set host = "0.0.0.0" in a container)
EXPOSE 9464
# SIGTERM: stop fetching, drain in-flight requests for [loop] drain_timeout_s, commit, exit 0
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["llmroute"]
CMD ["run", "--config", "/etc/llmroute/worker.toml"]
