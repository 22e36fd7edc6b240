# The app image: gunicorn + our uvicorn worker class + the platform (service/platform/) + an app, non-root.
#
#   docker build -f deploy/Dockerfile.app -t blueprint-app:local .   (or `make images`; compose builds it)
#
# Which app: from the repository root (`docker compose build`, the command above) the demo service — its
# code in service/, its requirements the `demo` extra of pyproject.toml. For APP_SRC and APP_REQUIREMENTS
# (`make up APP_MODULE=main:app APP_SRC=... APP_REQUIREMENTS=...`) stackctl stages a build context under the
# run dir (deploy/stackctl/appimage.py) that also holds app/requirements/requirements.txt (the app's
# requirements, installed beside the platform's pins instead of the demo's) and app/src/ (its code: /app/src,
# first on the import path). The image is then tagged for that app, so the demo's image stays.
#
# Build args (env overrides of the same name through docker-compose.yml and `make`):
#   PYTHON_IMAGE  base image; anything with `python3` and its `venv` module (a site's own vetted base, or a
#                 Debian root filesystem made with mmdebstrap and `docker import`, as CI does).
#   OFFLINE=1     install only from ./wheelhouse (built on the host by `make wheelhouse` for this image's
#                 Python version, the app's requirements included), never from an index: the air-gapped build.
# Classic builder compatible on purpose (no RUN --mount, no heredocs): many hosts still lack buildx.
ARG PYTHON_IMAGE=python:3.12-slim

# --- build: a virtualenv with the platform's pins and the app's (the demo's: pyproject.toml) -------------
FROM ${PYTHON_IMAGE} AS build
ARG OFFLINE=0
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml /build/
COPY deploy/pins.py /build/deploy/
# The wheelhouse and app/ may not exist (online builds; the demo); the globs let COPY succeed either way, and
# pyproject.toml rides along only so that each instruction always has a source.
COPY pyproject.toml wheelhous[e] /build/wheelhouse/
COPY pyproject.toml app/requirement[s] /build/app/requirements/
# stackctl reads pip's failure from this step (a conflict names /build/platform.txt and the app's file).
RUN python3 -m venv /opt/venv \
 && if [ -f /build/app/requirements/requirements.txt ]; then \
        python3 /build/deploy/pins.py > /build/platform.txt; set -- -r /build/app/requirements/requirements.txt; \
    else python3 /build/deploy/pins.py demo > /build/platform.txt; set --; fi \
 && if [ "$OFFLINE" = 1 ]; then set -- "$@" --no-index --find-links /build/wheelhouse; fi \
 && /opt/venv/bin/pip install -q -r /build/platform.txt "$@"
# The app's code after the install, so that a change of the code alone reuses the virtualenv's layer.
COPY pyproject.toml ap[p] /build/app/
RUN mkdir -p /build/app/src

# --- runtime: the venv and the code, nothing else ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    # The app's own code first (as APP_SRC locally), then the platform.
    PYTHONPATH=/app/src:/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    # prometheus-client's multiprocess files: on the /tmp tmpfs (the root filesystem is read-only).
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    # Inside the compose network; nginx is the only way in (compose publishes no app port).
    GUNICORN_BIND=0.0.0.0:8000
COPY --from=build /opt/venv /opt/venv
COPY --from=build /build/app/src /app/src
WORKDIR /app
COPY service/ /app/service/
COPY deploy/__init__.py deploy/gunicorn.conf.py deploy/healthcheck.py /app/deploy/
# Bytecode now, because the running container cannot write it.
# (The app's own tree may hold scripts that are not Python 3; an import error shows in the pre-flight.)
RUN python3 -m compileall -q /app/service /app/deploy && (python3 -m compileall -q /app/src || true)
# Numeric, not a name: works on any base without useradd; no files in the image belong to it.
USER 10001:10001
EXPOSE 8000
# gunicorn's graceful stop: workers finish in-flight requests for GUNICORN_GRACEFUL_TIMEOUT; compose's
# stop_grace_period must be longer or Docker SIGKILLs (exit 137).
STOPSIGNAL SIGTERM
# /readyz turns 503 while workers drain, so a stopping container reports unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/app/deploy/healthcheck.py"]
# Exec form: gunicorn is PID 1 and receives Docker's signals itself (TERM = graceful, HUP = reload).
CMD ["gunicorn", "--config", "/app/deploy/gunicorn.conf.py"]
