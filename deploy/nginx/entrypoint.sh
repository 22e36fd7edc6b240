#!/bin/sh
# Entrypoint of the nginx image. Needs only /bin/sh, nginx, envsubst and a resolver tool (glibc `getent`,
# or busybox `nslookup` on Alpine) — so a site can build it on its own vetted base image.
#
#   blueprint-nginx serve    (the CMD) render the template, `nginx -t`, run nginx in the foreground, and
#                            follow the app's replicas (below). STOPSIGNAL is QUIT: nginx finishes open
#                            requests, then exits 0.
#   blueprint-nginx reload   re-render and reload the running nginx (`make reload` runs it via exec).
#   blueprint-nginx health   the HEALTHCHECK: nginx answers on its loopback status port.
#
# Rendering substitutes only the ${NGINX_*} names the template uses (nginx's own $variables stay), and
# fails with one line when one of them is not set: docker-compose.yml passes every NGINX_* knob. Then it
# keeps the template's `#[name] ` lines whose condition holds, as stackctl does for the local runtime:
# tls (NGINX_TLS=1; with tls_http2_on or tls_http2_listen by this nginx's version), demo_routes_off
# (APP_DEMO_ROUTES=0). With TLS, compose mounts the certificate and key read-only at NGINX_TLS_CERT/KEY.
#
# Why it re-resolves: nginx resolves `server app:8000;` once, at start. When compose recreates or scales
# the app, the containers get new addresses and nginx keeps sending to the old one (502). Two known fixes:
#   - `resolver 127.0.0.11` + a variable in proxy_pass: re-resolves per request, but such a proxy_pass has
#     no `upstream` block, so no upstream keep-alive pool — the very thing this blueprint tunes;
#   - `server app:8000 resolve;` in the upstream: right, but only in nginx >= 1.27.3 (Debian 12 has 1.22).
# So this script does what `resolve` does, on any nginx: every RESOLVE_EVERY seconds it asks Docker's DNS
# for all addresses of the upstream host, and when the set changes it renders one `server` line per
# replica and reloads nginx (graceful: open requests finish on the old workers). Keep-alive pools stay.
set -eu

TEMPLATE=${NGINX_TEMPLATE:-/etc/blueprint/nginx.conf.template}
RUN_DIR=${NGINX_RUN_DIR:-/tmp/nginx}
CONF=$RUN_DIR/nginx.conf
ADDRESSES=$RUN_DIR/upstream.addresses
# Swarm sets these (deploy/swarm.yml): it drops a stopping task from DNS 2 s before its TERM, so nginx must
# re-resolve faster than that; and it has no depends_on, so nginx waits for the first healthy app task.
RESOLVE_EVERY=${BLUEPRINT_RESOLVE_EVERY:-2}
UPSTREAM_WAIT=${BLUEPRINT_UPSTREAM_WAIT:-0}
# Every reload closes the old workers' idle client keep-alive connections, and a request a client sent on
# one of them in that instant is lost (wrk: a read error). A removal must reload at once; an addition alone
# may wait ADD_DELAY seconds, so that a start-first update's removal of the old task, right after its
# successor turned healthy, takes both changes in one reload.
ADD_DELAY=${BLUEPRINT_ADD_DELAY:-0}
added_since=""

log() { echo "blueprint-nginx: $*" >&2; }
die() { log "$*"; exit 1; }

template_variables() {
    grep -o '\${NGINX_[A-Z0-9_]*}' "$TEMPLATE" | tr -d '${}' | sort -u
}

upstream_host() { echo "${NGINX_UPSTREAM%:*}"; }
upstream_port() { echo "${NGINX_UPSTREAM##*:}"; }

# All IPv4 addresses of a host name, sorted, one per line; nothing when it does not resolve.
resolve() {
    case "$1" in
        *[!0-9.]*) ;;
        *) echo "$1"; return ;;
    esac
    # glibc: every address; musl's getent knows no `ahostsv4` (and `hosts` prints only the first one).
    found=$(getent ahostsv4 "$1" 2>/dev/null | awk '{ print $1 }') || found=""
    if [ -z "$found" ] && command -v nslookup >/dev/null 2>&1; then
        found=$(nslookup "$1" 2>/dev/null | awk '/^Name:/ { answer = 1; next } answer && /^Address/ { print $NF }')
    fi
    echo "$found" | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | sort -u || true
}

# The value `server ${NGINX_UPSTREAM};` is rendered with: one server per address.
server_lines() {
    echo "$1" | awk -v port="$(upstream_port)" '
        NR > 1 { printf ";\n        server " }
        { printf "%s:%s", $1, port }'
}

# The template conditions that hold here, space-separated.
conditions() {
    if [ "${NGINX_TLS:-0}" = 1 ]; then
        # nginx 1.25.1 moved HTTP/2 from `listen ... http2` (deprecated since) to `http2 on;`.
        if nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p' |
            awk -F. '{ exit !($1 > 1 || ($1 == 1 && ($2 > 25 || ($2 == 25 && $3 >= 1)))) }'; then
            printf 'tls tls_http2_on '
        else
            printf 'tls tls_http2_listen '
        fi
    fi
    [ "${APP_DEMO_ROUTES:-1}" = 1 ] || printf 'demo_routes_off '
}

# A `#[name] directive` line becomes `directive` when `name` is one of $1, else it is dropped.
apply_conditions() {
    awk -v on=" $1 " '
        match($0, /^[[:blank:]]*#\[[a-z0-9_]+\] /) {
            marker = substr($0, 1, RLENGTH)
            indent = marker; sub(/#.*/, "", indent)
            name = marker; sub(/^[[:blank:]]*#\[/, "", name); sub(/\] $/, "", name)
            if (index(on, " " name " ")) print indent substr($0, RLENGTH + 1)
            next
        }
        { print }'
}

# Render the template for the given addresses into $CONF and check it with `nginx -t`.
render() {
    missing=""
    for name in $(template_variables); do
        eval "value=\${$name-unset}"
        # shellcheck disable=SC2154 # set by eval
        [ "$value" != unset ] || missing="$missing $name"
    done
    if [ -n "$missing" ]; then
        log "template variables not set in the environment:$missing"
        return 1
    fi
    mkdir -p "$RUN_DIR"
    names=$(template_variables | sed 's/.*/${&}/' | tr '\n' ' ')
    NGINX_UPSTREAM=$(server_lines "$1") envsubst "$names" <"$TEMPLATE" | apply_conditions "$(conditions)" >"$CONF.new"
    # The template's *_temp_path lines name the writable directories nginx needs; create exactly those.
    sed -n 's/^[[:space:]]*[a-z_]*_temp_path[[:space:]]\{1,\}\([^;[:space:]]*\).*/\1/p' "$CONF.new" |
        while read -r directory; do mkdir -p "$directory"; done
    if ! checked=$(nginx -t -q -c "$CONF.new" -e stderr 2>&1); then
        log "nginx -t rejected the rendered config: $(echo "$checked" | tail -n 1)"
        return 1
    fi
    mv "$CONF.new" "$CONF"
    echo "$1" >"$ADDRESSES"
}

current_addresses() {
    addresses=$(resolve "$(upstream_host)")
    [ -n "$addresses" ] || die "NGINX_UPSTREAM=$NGINX_UPSTREAM: $(upstream_host) does not resolve"
    echo "$addresses"
}

# Up to UPSTREAM_WAIT seconds until the upstream host resolves (swarm lists only healthy tasks).
wait_for_upstream() {
    waited=0
    trap 'exit 0' QUIT TERM INT
    while [ "$waited" -lt "$UPSTREAM_WAIT" ] && [ -z "$(resolve "$(upstream_host)")" ]; do
        [ "$waited" -gt 0 ] || log "waiting up to ${UPSTREAM_WAIT}s for $(upstream_host) to resolve"
        sleep 1
        waited=$((waited + 1))
    done
    trap - QUIT TERM INT
}

render_current() {
    addresses=$(current_addresses) || exit 1
    render "$addresses" || exit 1
}

# True when every address of $1 is still in $2.
only_added() {
    for address in $1; do
        echo "$2" | grep -qxF "$address" || return 1
    done
}

# Re-resolve; on a new set of addresses re-render and signal nginx. An empty answer (the app is being
# recreated) keeps the last good config.
follow_upstream() {
    addresses=$(resolve "$(upstream_host)")
    [ -n "$addresses" ] || return 0
    previous=$(cat "$ADDRESSES" 2>/dev/null) || previous=""
    if [ "$addresses" = "$previous" ]; then
        added_since=""
        return 0
    fi
    if [ "$ADD_DELAY" -gt 0 ] && only_added "$previous" "$addresses"; then
        now=$(date +%s)
        added_since=${added_since:-$now}
        [ $((now - added_since)) -ge "$ADD_DELAY" ] || return 0
    fi
    added_since=""
    log "$(upstream_host) now resolves to $(echo "$addresses" | tr '\n' ' ')- reloading"
    render "$addresses" || return 1
    kill -HUP "$1"
}

serve() {
    : "${NGINX_UPSTREAM:?is not set (host:port of the app)}"
    wait_for_upstream
    render_current
    nginx -c "$CONF" -e stderr -g 'daemon off;' &
    nginx_pid=$!
    stopping=""
    trap 'stopping=1; kill -QUIT $nginx_pid 2>/dev/null || true' QUIT TERM INT
    trap 'kill -HUP $nginx_pid 2>/dev/null || true' HUP
    while kill -0 "$nginx_pid" 2>/dev/null; do
        sleep "$RESOLVE_EVERY" &
        wait $! || true
        [ -n "$stopping" ] || follow_upstream "$nginx_pid" || log "kept the previous config"
    done
    status=0
    wait "$nginx_pid" || status=$?
    exit "$status"
}

reload() {
    render_current
    kill -HUP "$(cat "$RUN_DIR/nginx.pid")"
    log "reloaded: upstream $(tr '\n' ' ' <"$ADDRESSES")"
}

health() {
    url="http://127.0.0.1:${NGINX_STATUS_PORT:-8081}/stub_status"
    if command -v wget >/dev/null 2>&1; then
        wget -q -T 3 -O - "$url" | grep -q '^Active connections'
    elif command -v bash >/dev/null 2>&1; then
        # shellcheck disable=SC2016 # expanded by bash
        timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 && printf "GET /stub_status HTTP/1.0\r\n\r\n" >&3 &&
            grep -q "^Active connections" <&3' _ "${NGINX_STATUS_PORT:-8081}"
    else
        kill -0 "$(cat "$RUN_DIR/nginx.pid")"
    fi
}

case "${1:-serve}" in
    serve) serve ;;
    reload) reload ;;
    health) health ;;
    resolve) resolve "$2" ;;
    *) die "unknown command ${1}; use serve, reload, health or resolve HOST" ;;
esac
