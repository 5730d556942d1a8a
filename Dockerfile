# syntax=docker/dockerfile:1
# Prompt Orchestrator: one image for web (`serve`), worker (`run_pipeline`) and
# `migrate`. Build: docker build -t prompt-orchestrator:$(git rev-parse --short HEAD) .
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- builder: every dependency as a wheel, llama.cpp compiled once -------------------
FROM ${PYTHON_IMAGE} AS builder
# A native build (-march=native) crashed with "Illegal instruction" on another CPU of
# the same class: build for the baseline, as the Makefile does.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY requirements.txt .
RUN pip wheel --wheel-dir /wheels -r requirements.txt

# --- runtime: slim, non-root, no compiler ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="Prompt Orchestrator" \
      org.opencontainers.image.description="Durable, observable, streamable LLM requests (Django + Channels)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://example.invalid/prompt-orchestrator" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=orchestrator_site.settings \
    ORCHESTRATOR_DATA_DIR=/tmp/orchestrator
# libgomp: llama.cpp's OpenMP runtime. The uid is fixed so that Kubernetes'
# runAsNonRoot can check it (deploy/k8s sets the same uid).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid orchestrator --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin orchestrator
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels -r requirements.txt
COPY manage.py ./
COPY orchestrator_site ./orchestrator_site
COPY inference ./inference
COPY pipeline ./pipeline
COPY templates ./templates
COPY deploy ./deploy
# Static files at build time, with throwaway settings: no secret is baked in.
# (Its data directory is a throwaway too: /tmp/orchestrator must stay the runtime
# user's to create, for a plain `docker run` on SQLite.)
RUN DEBUG=false SECRET_KEY=collectstatic-at-build-time-only ALLOWED_HOSTS=localhost \
    ORCHESTRATOR_DATA_DIR=/tmp/build-data python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/build-data
USER 10001:10001
EXPOSE 8000 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "orchestrator_site.healthcheck"]
ENTRYPOINT ["python", "manage.py"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
