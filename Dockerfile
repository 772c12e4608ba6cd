# syntax=docker/dockerfile:1
#
# segment-scoring service image.
#
#   docker build -t segment-scoring:dev .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp \
#     -e DATABASE_URL=postgresql+psycopg://user:pass@db:5432/segments segment-scoring:dev
#   docker run --rm -e DATABASE_URL=... segment-scoring:dev segments migrate
#
# The same image serves (default CMD) and runs the Alembic migrations
# (`segments migrate`). /app mirrors the repository layout: app/, alembic.ini,
# migrations/ and models/ (the default model, baked in) side by side, because
# app.settings.PROJECT_ROOT is the folder that holds the `app` package. The
# project is therefore installed in editable mode from /app (the venv only
# holds a .pth pointing at /app), not copied into site-packages.
# Set DATABASE_URL (and SEGMENTS_API_KEYS, SEGMENTS_ERASURE_KEY): the image
# carries no embedded PostgreSQL (requirements.lock leaves out the `embedded`
# extra), so a container always serves a real PostgreSQL server.

############################
# Builder: venv with the pinned dependencies, then the project itself.
############################
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# Same path as in the runtime stage: the editable install records /app.
WORKDIR /app

# Dependencies first so this layer is cached until the lock file changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --requirement requirements.lock

# Then the project (no dependency resolution: everything is pinned above).
# README*/LICENSE*: hatchling needs the files pyproject.toml names.
COPY pyproject.toml README* LICENSE* ./
COPY app/ ./app/
RUN pip install --no-cache-dir --no-deps --editable . \
    && segments --help > /dev/null

############################
# Runtime: slim image, venv + application files, non-root.
############################
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SEGMENTS_MODEL_DIR=/app/models

# Fixed numeric UID/GID 10001 (matches runAsUser in deploy/k8s): a numeric USER
# lets Kubernetes verify runAsNonRoot.
RUN groupadd --system --gid 10001 segments \
    && useradd --system --uid 10001 --gid 10001 \
       --home-dir /app --no-create-home --shell /usr/sbin/nologin segments

COPY --from=builder /opt/venv /opt/venv

# Application files are owned by root and read-only for the service user.
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ ./migrations/
COPY models/ ./models/
COPY app/ ./app/
# Byte-compile now: at run time the root filesystem is read-only and
# PYTHONDONTWRITEBYTECODE is set.
RUN python -m compileall -q app migrations

USER 10001:10001

EXPOSE 8000

# No curl in slim images: probe /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["segments", "serve", "--host", "0.0.0.0", "--port", "8000"]
