# syntax=docker/dockerfile:1
# The realtime server image. Needs BuildKit (the default since Docker 23, `docker compose`, and
# `fly deploy`): the final stage installs the wheels through a build mount, so they never land
# in a layer. With the old builder: DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1.
#
#   docker build -t realtime .
#   docker run --rm -p 4444:4444 -e WS_SIGNING_KEYS="$(cat key.pem)" realtime
#
# Migrations are never run implicitly: run `realtime migrate` once per release (compose has a
# one-shot `migrate` service; fly.toml a release_command). The server refuses to start while
# migrations are pending.
ARG PYTHON_VERSION=3.11

# --- builder: a wheel of the project plus wheels of every runtime dependency -----------------
FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore keeps tests, benchmarks, keys, .env and caches out of the context.
COPY . .
# the uvloop extra: EVENT_LOOP=auto then serves on uvloop, the loop docs/benchmarks.md measures
RUN pip wheel --wheel-dir /wheels ".[uvloop]"

# --- runtime: the installed wheels and nothing else -------------------------------------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=4444 \
    KEYS_DIR=/var/lib/realtime/keys

RUN groupadd --system --gid 10001 realtime \
    && useradd --system --uid 10001 --gid realtime --home-dir /var/lib/realtime --create-home \
       --shell /usr/sbin/nologin realtime \
    && install -d -o realtime -g realtime -m 0700 /var/lib/realtime/keys

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "realtime-pubsub[uvloop]"

# Signing keys: every instance behind one load balancer must share them. Either set the secret
# WS_SIGNING_KEYS (PEMs; KEYS_DIR is then ignored), or mount one volume shared by all instances
# at KEYS_DIR and run `realtime keys generate` once. With neither, each container generates its
# own development key at start-up (logged as a warning): fine for one instance only.
WORKDIR /var/lib/realtime
USER realtime:realtime
EXPOSE 4444

# Liveness without curl: urllib raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '4444'), timeout=2)" || exit 1

# On SIGTERM the server stops accepting, sends RECONNECT, waits up to SHUTDOWN_GRACE (10 s) and
# exits 0: give it longer than that before SIGKILL (docker stop -t 30, fly kill_timeout = 30).
STOPSIGNAL SIGTERM
CMD ["realtime", "serve"]
