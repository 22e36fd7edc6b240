#!/bin/sh
# Entrypoint of the Prometheus image (deploy/Dockerfile.prometheus). Needs only /bin/sh, awk, prometheus and
# promtool, so the base can be the official prom/prometheus (busybox) or a Debian root filesystem with the
# `prometheus` package (as CI makes with mmdebstrap).
#
#   blueprint-prometheus serve    (the CMD) render the template, check it (and the rules) with promtool, run
#                                 Prometheus in the foreground on 0.0.0.0:9090, storage in $RUN_DIR/data
#   blueprint-prometheus render   print the rendered config
#   blueprint-prometheus health   the HEALTHCHECK: Prometheus is ready and answers a query
#
# Rendering substitutes every ${NAME} the template uses from the environment and fails in one line when one
# is not set: the image sets the container layout (BLUEPRINT_*), docker-compose.yml the knobs
# (PROMETHEUS_SCRAPE_INTERVAL, PROMETHEUS_RETENTION, APP_METRICS_PATH), deploy/swarm.yml `tasks.app`. Of the
# template's `#[name] ` lines it keeps the `dns` ones, as stackctl keeps the `static` ones for the local
# runtime (deploy/stackctl/monitoring.py renders the same template; a test compares the two).
set -eu

TEMPLATE=${BLUEPRINT_TEMPLATE:-/etc/blueprint/prometheus/prometheus.yml.template}
# A tmpfs in compose and swarm: the samples live as long as the container (PROMETHEUS_RETENTION at most).
RUN_DIR=${BLUEPRINT_RUN_DIR:-/prometheus}
CONF=$RUN_DIR/prometheus.yml

die() { echo "blueprint-prometheus: $*" >&2; exit 1; }

render() {
    awk -v template="$TEMPLATE" '
        {
            line = $0; out = ""
            while (match(line, /\$\{[A-Z][A-Z0-9_]*\}/)) {
                name = substr(line, RSTART + 2, RLENGTH - 3)
                if (!(name in ENVIRON)) {
                    print "blueprint-prometheus: " name " is not set (" template " uses it)" > "/dev/stderr"
                    exit 1
                }
                out = out substr(line, 1, RSTART - 1) ENVIRON[name]
                line = substr(line, RSTART + RLENGTH)
            }
            line = out line
            if (match(line, /^[ \t]*#\[[a-z0-9_]+\] /)) {
                marker = substr(line, 1, RLENGTH)
                indent = marker; sub(/#.*/, "", indent)
                if (marker ~ /#\[dns\] $/) print indent substr(line, RLENGTH + 1)
                next
            }
            print line
        }' "$TEMPLATE"
}

serve() {
    : "${PROMETHEUS_RETENTION:?is not set (docker-compose.yml passes the knob)}"
    mkdir -p "$RUN_DIR/data"
    render >"$CONF.new"
    if ! checked=$(promtool check config "$CONF.new" 2>&1); then
        die "promtool check config rejected the rendered config: $(echo "$checked" | grep -i -m 1 'failed\|error' || echo "$checked" | tail -n 1)"
    fi
    mv "$CONF.new" "$CONF"
    exec prometheus --config.file="$CONF" --storage.tsdb.path="$RUN_DIR/data" \
        --storage.tsdb.retention.time="$PROMETHEUS_RETENTION" --web.listen-address=0.0.0.0:9090
}

case "${1:-serve}" in
    serve) serve ;;
    render) render ;;
    health) promtool query instant http://127.0.0.1:9090 'vector(1)' >/dev/null ;;
    *) die "unknown command $1; use serve, render or health" ;;
esac
