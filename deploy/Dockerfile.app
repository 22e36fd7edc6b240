# The app image: gunicorn + our uvicorn worker class + the FastAPI service, as a non-root user.
#
#   docker build -f deploy/Dockerfile.app -t blueprint-app .        (or `make images`; compose builds it)
#
# Build args (env overrides of the same name through docker-compose.yml and `make`):
#   PYTHON_IMAGE  base image; anything with `python3` and its `venv` module (a site's own vetted base, or a
#                 Debian root filesystem made with mmdebstrap and `docker import`, as CI does).
#   OFFLINE=1     install only from ./wheelhouse (built on the host by `make wheelhouse` for this image's
#                 Python version), never from an index: the air-gapped build.
# Classic builder compatible on purpose (no RUN --mount, no heredocs): many hosts still lack buildx.
ARG PYTHON_IMAGE=python:3.12-slim

# --- build: a virtualenv with the platform's pins and the demo's (pyproject.toml) ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG OFFLINE=0
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml /build/
COPY deploy/pins.py /build/deploy/
# The wheelhouse may not exist (online builds); the glob lets COPY succeed either way, and pyproject.toml
# rides along only so that the instruction always has a source.
COPY pyproject.toml wheelhous[e] /build/wheelhouse/
RUN python3 -m venv /opt/venv \
 && python3 /build/deploy/pins.py demo > /build/requirements.txt \
 && if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /build/wheelhouse; else set --; fi \
 && /opt/venv/bin/pip install -q "$@" -r /build/requirements.txt

# --- runtime: the venv and the code, nothing else ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    # prometheus-client's multiprocess files: on the /tmp tmpfs (the root filesystem is read-only).
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    # Inside the compose network; nginx is the only way in (compose publishes no app port).
    GUNICORN_BIND=0.0.0.0:8000
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY service/ /app/service/
COPY deploy/__init__.py deploy/gunicorn.conf.py deploy/healthcheck.py /app/deploy/
# Bytecode now, because the running container cannot write it.
RUN python3 -m compileall -q /app/service /app/deploy
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
