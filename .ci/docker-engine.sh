#!/usr/bin/env bash
# A private Docker engine for CI, and base images without a registry (see README, "Containers in CI").
#
#   .ci/docker-engine.sh start DIR   start dockerd with its data, socket and pid under DIR, wait until it
#                                    answers, make the base images; prints `export ...` lines to eval
#   .ci/docker-engine.sh stop DIR    stop the dockerd started with DIR (by its pid) and remove DIR
#
# The engine leaves the host alone: no iptables rules, no masquerading, no forwarding, no docker0 bridge.
# Compose's own networks, service-name DNS and published loopback ports (userland proxy) still work.
# Base images: Debian root filesystems from mmdebstrap, `docker import`ed — python3 + venv for the app
# and Locust images (DEBIAN_SUITE), nginx + envsubst for the nginx image (NGINX_DEBIAN_SUITE), prometheus +
# prometheus-nginx-exporter for the two images of MONITORING=1 (DEBIAN_SUITE; one root filesystem, imported
# twice: the exporter's with its binary as ENTRYPOINT, as the official image has it), redis-server (and
# redis-cli) for the rooms' backplane (DEBIAN_SUITE). Nothing is cached between runs. The nginx image is
# tagged with its suite and nginx version (e.g. nginx-base:sid-1.30.6).
set -euo pipefail

command=${1:?usage: $0 start|stop DIR}
dir=${2:?usage: $0 start|stop DIR}
socket="unix://$dir/docker.sock"
suite=${DEBIAN_SUITE:-bookworm}
# nginx from unstable, not bookworm: bookworm's 1.22 lacks `server ... resolve;` (nginx >= 1.27.3), which the
# image's entrypoint uses, as it does on the users' default nginx:1.28-alpine; 1.22 would test the older
# re-resolve-and-reload path instead (NGINX_DEBIAN_SUITE=bookworm tests exactly that). In sid, nginx-light is
# only nginx plus the echo module: `nginx` is the core (stub_status, ssl, http2 built in), in any suite.
nginx_suite=${NGINX_DEBIAN_SUITE:-sid}
# A frozen mirror snapshot serves a sid InRelease past its Valid-Until, which apt refuses by default.
snapshot_ok=(--aptopt='Acquire::Check-Valid-Until "false"')

fail() { echo "docker-engine: $*" >&2; exit 1; }

start() {
    mkdir -p "$dir"
    command -v dockerd >/dev/null || fail "dockerd is not installed (apt-get install docker.io)"
    command -v mmdebstrap >/dev/null || fail "mmdebstrap is not installed (apt-get install mmdebstrap)"
    # The root filesystems build while the engine starts.
    mmdebstrap --quiet --variant=minbase "${snapshot_ok[@]}" --include=python3,python3-venv,ca-certificates \
        "$suite" "$dir/python-base.tar" >"$dir/mmdebstrap-python.log" 2>&1 &
    python_rootfs=$!
    mmdebstrap --quiet --variant=minbase "${snapshot_ok[@]}" --include=nginx,gettext-base \
        "$nginx_suite" "$dir/nginx-base.tar" >"$dir/mmdebstrap-nginx.log" 2>&1 &
    nginx_rootfs=$!
    mmdebstrap --quiet --variant=minbase "${snapshot_ok[@]}" --aptopt='APT::Install-Recommends "false"' \
        --include=prometheus,prometheus-nginx-exporter \
        "$suite" "$dir/monitoring-base.tar" >"$dir/mmdebstrap-monitoring.log" 2>&1 &
    monitoring_rootfs=$!
    mmdebstrap --quiet --variant=minbase "${snapshot_ok[@]}" --include=redis-server \
        "$suite" "$dir/redis-base.tar" >"$dir/mmdebstrap-redis.log" 2>&1 &
    redis_rootfs=$!

    dockerd --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
        --data-root "$dir/data" --exec-root "$dir/exec" -H "$socket" --pidfile "$dir/dockerd.pid" \
        >"$dir/dockerd.log" 2>&1 &
    echo $! >"$dir/dockerd.started-pid"
    for _ in $(seq 60); do
        DOCKER_HOST=$socket docker info >/dev/null 2>&1 && break
        kill -0 "$(cat "$dir/dockerd.started-pid")" 2>/dev/null || fail "dockerd exited: $(tail -n 3 "$dir/dockerd.log")"
        sleep 0.5
    done
    DOCKER_HOST=$socket docker info >/dev/null 2>&1 || fail "dockerd did not answer within 30 s: $(tail -n 3 "$dir/dockerd.log")"

    wait "$python_rootfs" || fail "mmdebstrap (python base) failed: $(tail -n 3 "$dir/mmdebstrap-python.log")"
    wait "$nginx_rootfs" || fail "mmdebstrap (nginx base) failed: $(tail -n 3 "$dir/mmdebstrap-nginx.log")"
    wait "$redis_rootfs" || fail "mmdebstrap (redis base) failed: $(tail -n 3 "$dir/mmdebstrap-redis.log")"
    wait "$monitoring_rootfs" ||
        fail "mmdebstrap (monitoring base) failed: $(tail -n 3 "$dir/mmdebstrap-monitoring.log")"
    DOCKER_HOST=$socket docker import "$dir/python-base.tar" "blueprint/python-base:$suite" >/dev/null
    nginx_version=$(tar -xOf "$dir/nginx-base.tar" ./var/lib/dpkg/status |
        awk '/^Package: / { nginx = $2 == "nginx" } nginx && /^Version: / { sub(/-[^-]*$/, "", $2); print $2 }')
    nginx_image=blueprint/nginx-base:$nginx_suite-${nginx_version:?no nginx package in the nginx root filesystem}
    DOCKER_HOST=$socket docker import "$dir/nginx-base.tar" "$nginx_image" >/dev/null
    DOCKER_HOST=$socket docker import "$dir/monitoring-base.tar" "blueprint/prometheus-base:$suite" >/dev/null
    DOCKER_HOST=$socket docker import "$dir/redis-base.tar" "blueprint/redis-base:$suite" >/dev/null
    DOCKER_HOST=$socket docker import --change 'ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]' \
        "$dir/monitoring-base.tar" "blueprint/nginx-exporter-base:$suite" >/dev/null
    rm -f "$dir/python-base.tar" "$dir/nginx-base.tar" "$dir/monitoring-base.tar" \
        "$dir/redis-base.tar"

    echo "export DOCKER_HOST=$socket"
    echo "export PYTHON_IMAGE=blueprint/python-base:$suite NGINX_IMAGE=$nginx_image OFFLINE=1"
    echo "export PROMETHEUS_IMAGE=blueprint/prometheus-base:$suite" \
        "NGINX_EXPORTER_IMAGE=blueprint/nginx-exporter-base:$suite"
    echo "export REDIS_IMAGE=blueprint/redis-base:$suite"
}

stop() {
    [ -f "$dir/dockerd.started-pid" ] || return 0
    pid=$(cat "$dir/dockerd.started-pid")
    if kill -0 "$pid" 2>/dev/null; then
        DOCKER_HOST=$socket docker ps -q | xargs -r env DOCKER_HOST="$socket" docker rm -f >/dev/null 2>&1 || true
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    # Container mounts under the exec root must go before the directory can.
    grep -F " $dir/" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir"
}

case "$command" in
    start) start ;;
    stop) stop ;;
    *) fail "unknown command $command; use start or stop" ;;
esac
