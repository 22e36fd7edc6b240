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
# fails with one line when one of them is not set: docker-compose.yml passes every NGINX_* knob. It renders
# the one repeated block once per WebSocket location of NGINX_WEBSOCKET_PATHS, and keeps the template's
# `#[name] ` lines whose condition holds, as stackctl does for the local runtime:
# tls (NGINX_TLS=1; with tls_http2_on or tls_http2_listen by this nginx's version), ocsp (NGINX_TLS=1 and
# NGINX_OCSP_STAPLING=1), demo_routes_off (APP_DEMO_ROUTES=0), limit_req / limit_conn
# (NGINX_LIMIT_REQ_ENABLED / NGINX_LIMIT_CONN_ENABLED=1), resolve (below). With TLS, compose mounts the
# certificate and key read-only at
# NGINX_TLS_CERT/KEY.
#
# Following the app's replicas. nginx resolves `server app:8000;` once, at start: when compose recreates or
# scales the app, or swarm replaces a task, the addresses change and nginx keeps sending to the old ones.
#   - nginx >= 1.27.3 (the default nginx:1.28-alpine; CI's Debian sid base): the upstream is rendered as
#     `server <host>:<port> resolve;` with a `zone` and Docker's DNS as `resolver` (the template's `resolve`
#     lines). nginx itself re-asks for the name every 2 s (valid=1s, and its timer adds 1 s), adds and
#     removes servers in its shared zone, and never reloads for it: a removed server's in-flight requests
#     finish (it is freed when the last one ends), its idle pooled connections are never picked again (the
#     keepalive pool is searched by the address round-robin chose) and close by themselves. Until the name
#     resolves the upstream is empty (502); an NXDOMAIN empties it too, a failed lookup keeps it.
#   - older nginx (Debian 12's 1.22): this script does what `resolve` does. Every RESOLVE_EVERY seconds it
#     asks Docker's DNS for all addresses of the upstream host, and when the set changes it renders one
#     `server` line per replica and reloads nginx (graceful: open requests finish on the old workers;
#     keep-alive pools stay). Every such reload closes the old workers' idle client keep-alive connections,
#     and a request a client sent on one of them in that instant is lost (docs/SWARM.md measured 2-4).
# (`resolver` + a variable in proxy_pass also re-resolves, per request, but such a proxy_pass has no
# `upstream` block, so no upstream keep-alive pool — the very thing this blueprint tunes.)
# On both, $RUN_DIR/upstream.addresses lists the addresses nginx balances over, for stackctl's waits.
#
# NGINX_UPSTREAM=unix:/path (deploy/compose.unix.yml: the app's socket on a volume both containers mount):
# rendered as `server unix:/path;`, nothing to resolve or follow; upstream.addresses lists the socket.
set -eu

TEMPLATE=${NGINX_TEMPLATE:-/etc/blueprint/nginx.conf.template}
RUN_DIR=${NGINX_RUN_DIR:-/tmp/nginx}
CONF=$RUN_DIR/nginx.conf
ADDRESSES=$RUN_DIR/upstream.addresses
# Swarm sets these (deploy/swarm.yml): it drops a stopping task from DNS 2 s before its TERM, so an older
# nginx must be re-resolved faster than that (with `resolve` this only paces upstream.addresses); and it has
# no depends_on, so nginx waits for the first healthy app task.
RESOLVE_EVERY=${BLUEPRINT_RESOLVE_EVERY:-2}
UPSTREAM_WAIT=${BLUEPRINT_UPSTREAM_WAIT:-0}
# Older nginx only: a removal must reload at once; an addition alone may wait ADD_DELAY seconds, so that a
# start-first update's removal of the old task, right after its successor turned healthy, takes both changes
# in one reload (each reload may cost a request, above).
ADD_DELAY=${BLUEPRINT_ADD_DELAY:-0}
added_since=""
# With `resolve`: nginx has a new set of addresses about 2 s after DNS gave it (its period, plus the lookup),
# so upstream.addresses lists a set only once DNS has given it for this many (whole) seconds.
RESOLVE_SETTLED=4

log() { echo "blueprint-nginx: $*" >&2; }
die() { log "$*"; exit 1; }

template_variables() {
    grep -o '\${NGINX_[A-Z0-9_]*}' "$TEMPLATE" | tr -d '${}' | sort -u
}

upstream_host() { echo "${NGINX_UPSTREAM%:*}"; }
upstream_port() { echo "${NGINX_UPSTREAM##*:}"; }
# True when the upstream is a unix socket (unix:/path), not host:port.
upstream_is_unix() { case "$NGINX_UPSTREAM" in unix:*) return 0 ;; *) return 1 ;; esac; }

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

# The value `server ${NGINX_UPSTREAM};` is rendered with: one server per address (a socket: itself).
server_lines() {
    if upstream_is_unix; then
        printf '%s' "$NGINX_UPSTREAM"
        return
    fi
    echo "$1" | awk -v port="$(upstream_port)" '
        NR > 1 { printf ";\n        server " }
        { printf "%s:%s", $1, port }'
}

nginx_version() { nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p'; }

# True when this nginx is version $1 (e.g. 1.27.3) or newer.
nginx_at_least() {
    nginx_version | awk -F. -v want="$1" '
        {
            split(want, w, ".")
            for (i = 1; i <= 3; i++) if ($i + 0 != w[i] + 0) { newer = $i + 0 > w[i] + 0; exit }
            newer = 1
        }
        END { exit !newer }'
}

# True when nginx follows the upstream host's addresses itself: `server ... resolve` (nginx 1.27.3) and a
# host name, not an address.
follows_by_itself() {
    upstream_is_unix && return 1
    case "$(upstream_host)" in
        *[!0-9.]*) nginx_at_least 1.27.3 ;;
        *) return 1 ;;
    esac
}

# The template conditions that hold here, space-separated.
conditions() {
    if [ "${NGINX_TLS:-0}" = 1 ]; then
        # nginx 1.25.1 moved HTTP/2 from `listen ... http2` (deprecated since) to `http2 on;`.
        if nginx_at_least 1.25.1; then
            printf 'tls tls_http2_on '
        else
            printf 'tls tls_http2_listen '
        fi
        [ "${NGINX_OCSP_STAPLING:-0}" != 1 ] || printf 'ocsp '
    fi
    [ "$RESOLVE" = 0 ] || printf 'resolve '
    [ "${APP_DEMO_ROUTES:-1}" = 1 ] || printf 'demo_routes_off '
    [ "${NGINX_LIMIT_REQ_ENABLED:-0}" = 0 ] || printf 'limit_req '
    [ "${NGINX_LIMIT_CONN_ENABLED:-0}" = 0 ] || printf 'limit_conn '
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

# NGINX_WEBSOCKET_PATHS as nginx location arguments, each followed by `;` (as service/websocket_paths.py
# derives them): an entry ending in / is a prefix, `/chat/` -> `/chat/;= /chat;`; any other one exact path,
# `/chat/socket` -> `= /chat/socket;`. stackctl checks the value first (`make check`); this refuses only what
# would break the config's syntax, for a compose file run without it.
websocket_locations() {
    set -f # an entry is a word, never a glob
    for entry in $NGINX_WEBSOCKET_PATHS; do
        case "$entry" in
            / | [!/]* | *[!A-Za-z0-9._~/-]*)
                log "NGINX_WEBSOCKET_PATHS='$NGINX_WEBSOCKET_PATHS': '$entry' must be a path other than /," \
                    "of letters, digits, . _ ~ - and / only"
                set +f
                return 1
                ;;
            */) printf '%s;= %s;' "$entry" "${entry%/}" ;;
            *) printf '= %s;' "$entry" ;;
        esac
    done
    set +f
}

# The template's `#[each websocket_location]` ... `#[end each]` block once per location of $1 (`;`-ended),
# `{{websocket_location}}` replaced by it.
expand_websocket_locations() {
    # index(), not gsub(): no regex or `&` handling to differ between gawk, mawk and busybox awk.
    awk -v locations="$1" -v placeholder="{{websocket_location}}" '
        /^[[:blank:]]*#\[each websocket_location\][[:blank:]]*$/ { inside = 1; block = ""; next }
        inside && /^[[:blank:]]*#\[end each\][[:blank:]]*$/ {
            inside = 0
            count = split(locations, each, ";")
            for (i = 1; i < count; i++) {
                text = block
                while ((at = index(text, placeholder)) > 0) {
                    printf "%s%s", substr(text, 1, at - 1), each[i]
                    text = substr(text, at + length(placeholder))
                }
                printf "%s", text
            }
            next
        }
        inside { block = block $0 "\n"; next }
        { print }'
}

# Render the template into $CONF and check it with `nginx -t`: with `resolve` for the host name, else with
# one server line for each address in $1.
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
    if [ "$RESOLVE" = 1 ]; then
        upstream="$NGINX_UPSTREAM resolve"
    else
        upstream=$(server_lines "$1")
    fi
    locations=$(websocket_locations) || return 1
    expand_websocket_locations "$locations" <"$TEMPLATE" | NGINX_UPSTREAM=$upstream envsubst "$names" |
        apply_conditions "$(conditions)" >"$CONF.new"
    # The template's *_temp_path lines name the writable directories nginx needs; create exactly those.
    sed -n 's/^[[:space:]]*[a-z_]*_temp_path[[:space:]]\{1,\}\([^;[:space:]]*\).*/\1/p' "$CONF.new" |
        while read -r directory; do mkdir -p "$directory"; done
    if ! checked=$(nginx -t -q -c "$CONF.new" -e stderr 2>&1); then
        log "nginx -t rejected the rendered config: $(echo "$checked" | tail -n 1)"
        return 1
    fi
    mv "$CONF.new" "$CONF"
    [ "$RESOLVE" = 1 ] || echo "$1" >"$ADDRESSES"
}

current_addresses() {
    if upstream_is_unix; then
        echo "$NGINX_UPSTREAM"
        return
    fi
    addresses=$(resolve "$(upstream_host)")
    [ -n "$addresses" ] || die "NGINX_UPSTREAM=$NGINX_UPSTREAM: $(upstream_host) does not resolve"
    echo "$addresses"
}

# True when the upstream is there: its host resolves, or its socket file exists.
upstream_present() {
    if upstream_is_unix; then
        [ -S "${NGINX_UPSTREAM#unix:}" ]
    else
        [ -n "$(resolve "$(upstream_host)")" ]
    fi
}

# Up to UPSTREAM_WAIT seconds until the upstream is there (swarm lists only healthy tasks).
wait_for_upstream() {
    waited=0
    trap 'exit 0' QUIT TERM INT
    while [ "$waited" -lt "$UPSTREAM_WAIT" ] && ! upstream_present; do
        [ "$waited" -gt 0 ] || log "waiting up to ${UPSTREAM_WAIT}s for $NGINX_UPSTREAM"
        sleep 1
        waited=$((waited + 1))
    done
    trap - QUIT TERM INT
}

render_current() {
    if [ "$RESOLVE" = 1 ]; then
        render "" || exit 1
        return
    fi
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
    upstream_is_unix && return 0
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

# With `resolve`: write the addresses to $ADDRESSES once DNS has given the same set for RESOLVE_SETTLED
# seconds (nginx has them by then). nginx is never signalled.
note_settled() {
    addresses=$(resolve "$(upstream_host)")
    now=$(date +%s)
    if [ "$addresses" != "$seen" ]; then
        seen=$addresses
        seen_since=$now
    fi
    [ $((now - seen_since)) -ge "$RESOLVE_SETTLED" ] || return 0
    [ "$addresses" != "$(cat "$ADDRESSES" 2>/dev/null)" ] || return 0
    echo "$addresses" >"$ADDRESSES"
    log "nginx balances over $(upstream_host) = $(echo "$addresses" | tr '\n' ' ')(it resolves it itself)"
}

serve() {
    wait_for_upstream
    if upstream_is_unix; then
        log "nginx $(nginx_version) connects to the app's socket $NGINX_UPSTREAM: nothing to resolve"
    elif [ "$RESOLVE" = 1 ]; then
        log "nginx $(nginx_version) resolves $(upstream_host) itself (server ... resolve): no reloads for it"
    else
        log "nginx $(nginx_version) has no upstream \`resolve\` (1.27.3): re-resolving $(upstream_host)" \
            "every ${RESOLVE_EVERY}s, reloading when its addresses change"
    fi
    render_current
    nginx -c "$CONF" -e stderr -g 'daemon off;' &
    nginx_pid=$!
    stopping=""
    seen="(nothing yet)"
    seen_since=0
    trap 'stopping=1; kill -QUIT $nginx_pid 2>/dev/null || true' QUIT TERM INT
    trap 'kill -HUP $nginx_pid 2>/dev/null || true' HUP
    while kill -0 "$nginx_pid" 2>/dev/null; do
        sleep "$RESOLVE_EVERY" &
        wait $! || true
        if [ -n "$stopping" ]; then
            :
        elif [ "$RESOLVE" = 1 ]; then
            note_settled
        else
            follow_upstream "$nginx_pid" || log "kept the previous config"
        fi
    done
    status=0
    wait "$nginx_pid" || status=$?
    exit "$status"
}

reload() {
    render_current
    kill -HUP "$(cat "$RUN_DIR/nginx.pid")"
    if [ "$RESOLVE" = 1 ]; then
        log "reloaded: upstream $NGINX_UPSTREAM resolve"
    else
        log "reloaded: upstream $(tr '\n' ' ' <"$ADDRESSES")"
    fi
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
    serve | reload)
        : "${NGINX_UPSTREAM:?is not set (host:port or unix:/path of the app)}"
        RESOLVE=0
        follows_by_itself && RESOLVE=1
        "${1:-serve}"
        ;;
    health) health ;;
    resolve) resolve "$2" ;;
    *) die "unknown command ${1}; use serve, reload, health or resolve HOST" ;;
esac
