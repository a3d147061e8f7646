# Callscope collector: `callscope serve` (OTLP gRPC :4317, HTTP :4318). Also runs `migrate`, `simulate`, `doctor`.
#   docker build -t callscope .
#   docker run --rm -e CALLSCOPE_DATABASE_URL=postgresql://user:pass@db:5432/callscope -p 4317:4317 -p 4318:4318 callscope
# Base pinned by tag (bump deliberately; add @sha256:… to pin the exact bytes).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Everything .dockerignore lets through: the package sources, pyproject, README and provisioning/ (read by
# `callscope doctor` from the working directory). Wheels exist for every dependency: no compiler needed.
COPY . .
RUN pip install . \
    && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin callscope

# Numeric, so that runAsNonRoot-style checks can verify it without /etc/passwd.
USER 10001:10001

EXPOSE 4317 4318

# gRPC health service (grpc.health.v1) of this container's receiver; honours CALLSCOPE_GRPC_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["callscope", "health"]

# SIGTERM (docker stop) stops accepting, flushes what was accepted and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["callscope"]
CMD ["serve"]
