# The counters service on real Redis and Postgres (compose.yaml wires both). The embedded
# servers (the `counters[embedded]` extra) are not installed: without COUNTERS_REDIS_URL and
# COUNTERS_DATABASE_URL the container exits 1 saying so.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY counters counters
COPY api api
COPY persist persist
COPY lua lua
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin counters \
    && mkdir -p /data \
    && chown counters:counters /data
USER 10001:10001
# inside the image it listens on every interface (publish the port to choose who reaches it)
ENV COUNTERS_HOST=0.0.0.0 \
    COUNTERS_PORT=8000 \
    COUNTERS_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('COUNTERS_PORT', '8000'), timeout=2)"]
CMD ["counters", "serve"]
