#!/usr/bin/env bash
# A three-node Docker swarm on this one Linux host, for trying RUNTIME=swarm across nodes (docs/SWARM.md)
# and for the multinode test tier (tests/multinode). Run as root.
#
#   deploy/multinode/nodes.sh up            namespaces, registry, one containerd + dockerd per node, the swarm
#   deploy/multinode/nodes.sh env           `export ...` lines for make: DOCKER_HOST (the manager), RUNTIME,
#                                           SWARM_REGISTRY, SWARM_NGINX_CONSTRAINT, DRILL_NODE_DOWN/UP
#   deploy/multinode/nodes.sh load-images IMAGE...   copy images from the engine of your DOCKER_HOST to the
#                                           manager (base images for OFFLINE=1 builds: the nodes have no route
#                                           out)
#   deploy/multinode/nodes.sh status        nodes, daemons, namespaces
#   deploy/multinode/nodes.sh stop NODE     stop a node's engine (SIGTERM to its dockerd, as `systemctl stop
#   deploy/multinode/nodes.sh start NODE    docker` does) / start it again; NODE = 2 or its hostname bpmn2
#   deploy/multinode/nodes.sh cut NODE      take a node's link down (its engine keeps running) / up again
#   deploy/multinode/nodes.sh restore NODE
#   deploy/multinode/nodes.sh down          stop and remove everything `up` made; safe to run again, and after
#                                           an `up` that failed half-way
#
# Topology (MULTINODE_NET=10.250.0): namespace bpmn-hub holds bridge bpmn-br (.1) and the registry on
# .1:5000 (Debian's docker-registry, plain HTTP); nodes bpmn1..3 (hostnames too) are namespaces with eth0
# .11-.13 on that bridge. The nodes and the hub have no default route and the hub does not forward: nothing
# leaves the subnet. This host reaches the subnet through one veth, bpmn-client (.254), so `make up`, wrk
# and the tests run here as on a workstation next to three machines; deleting the hub namespace deletes that
# link too. bpmn1 is the manager, bpmn2 carries the label blueprint.edge=true (nginx's node).
#
# What a node needs beyond `ip netns exec NS dockerd` (../shared/notes/multinode-swarm.md has the tries):
# `ip netns exec` remounts /sys, so the host's cgroup mounts are mounted again inside; each node runs its own
# containerd in the same mount namespace as its dockerd (else dockerd takes /run/containerd/containerd.sock
# when it exists, and overlay mounts of one namespace are invisible to the other); `unshare --uts` gives it
# its hostname; its own config file (no /etc/docker/daemon.json) and key path (no shared engine ID); the
# registry as insecure (plain HTTP). The engines keep their iptables rules inside their node's namespace
# (MULTINODE_IPTABLES=1, as on a real node): a host-mode port is then DNAT'ed in the kernel and nginx sees the
# client's address; 0 = --iptables=false, CI's single engine's flags, where docker-proxy stands in between.
#
# Knobs (environment): MULTINODE_DIR (state, sockets, data; /tmp/blueprint-multinode), MULTINODE_PREFIX (of
# the namespaces, links and hostnames; bpmn), MULTINODE_NET (first three octets of the /24; 10.250.0),
# MULTINODE_HEARTBEAT (`docker swarm update --dispatcher-heartbeat`; 5s, Docker's default: a lost node is
# marked down after about 3 of them), MULTINODE_IPTABLES (1). Give the same ones to every command.
set -euo pipefail

SELF=$(readlink -f "$0")
DIR=${MULTINODE_DIR:-/tmp/blueprint-multinode}
NET=${MULTINODE_NET:-10.250.0}
HEARTBEAT=${MULTINODE_HEARTBEAT:-5s}
IPTABLES=${MULTINODE_IPTABLES:-1}
NODES=(1 2 3)
PREFIX=${MULTINODE_PREFIX:-bpmn}
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "multinode: MULTINODE_PREFIX=$PREFIX: 1-8 lower-case letters or digits (interface names are short)" >&2; exit 2; }
[[ "$NET" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "multinode: MULTINODE_NET=$NET: the first three octets of a /24, e.g. 10.250.0" >&2; exit 2; }
HUB=$PREFIX-hub
BRIDGE=$PREFIX-br
CLIENT=$PREFIX-client
CLIENT_ADDRESS=$NET.254
REGISTRY=$NET.1:5000
EDGE=2
EDGE_LABEL=blueprint.edge=true
CGROUP_CONTROLLERS_FILE=$DIR/host-cgroup-mounts

log() { echo "multinode: $*" >&2; }
die() { echo "multinode: $*" >&2; exit 1; }
ns() { echo "$PREFIX$1"; }
address() { echo "$NET.1$1"; }
node_dir() { echo "$DIR/$(ns "$1")"; }
socket() { echo "unix://$(node_dir "$1")/docker.sock"; }
d() { local n=$1; shift; docker -H "$(socket "$n")" "$@"; }

# NODE as given (2, bpmn2) -> 2
node_number() {
    local given=${1:?a node: 1-3 or its hostname $PREFIX<N>}
    given=${given#"$PREFIX"}
    case " ${NODES[*]} " in *" $given "*) echo "$given" ;; *) die "no node $1: choose 1-3 or $PREFIX<N>" ;; esac
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$1" 2>/dev/null || true; }

# Wait until pid $1 is gone, up to $2 tenths of a second; then SIGKILL it.
reap() {
    local pid=$1 tenths=$2
    for _ in $(seq "$tenths"); do alive "$pid" || return 0; sleep 0.1; done
    if alive "$pid"; then log "pid $pid did not stop; SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
}

# --- inside a node's namespaces (`ip netns exec NS unshare --uts nodes.sh _node N FLAGS...`) ------------

node_main() {
    local n=$1; shift
    local dir; dir=$(node_dir "$n")
    hostname "$(ns "$n")"
    mkdir -p "$dir/data" "$dir/exec"
    # `ip netns exec` mounted a fresh sysfs, without /sys/fs/cgroup/*: dockerd would die with "Devices
    # cgroup isn't mounted". Mount the host's cgroup hierarchies again, same type and options.
    while read -r source target type options _; do
        mkdir -p "$target" 2>/dev/null || true
        mount -t "$type" -o "$options" "$source" "$target" || log "cannot mount $type on $target"
    done <"$CGROUP_CONTROLLERS_FILE"
    cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/data/containerd"
state = "$dir/exec/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/data/containerd-opt"
EOF
    echo "{\"deprecated-key-path\": \"$dir/key.json\"}" >"$dir/daemon.json"
    containerd --config "$dir/containerd.toml" >>"$dir/containerd.log" 2>&1 &
    local containerd_pid=$!
    echo "$containerd_pid" >"$dir/containerd.pid"
    for _ in $(seq 100); do [ -S "$dir/containerd.sock" ] && break; sleep 0.1; done
    local status=0
    dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "$(socket "$n")" --pidfile "$dir/docker.pid" \
        --config-file "$dir/daemon.json" --containerd "$dir/containerd.sock" --cgroup-parent "/$(ns "$n")" \
        --insecure-registry "$REGISTRY" "$@" >>"$dir/dockerd.log" 2>&1 || status=$?
    echo "dockerd exited with $status" >>"$dir/dockerd.log"
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
}

# --- pieces of `up` ----------------------------------------------------------------------------------

preflight() {
    [ "$(id -u)" = 0 ] || die "run as root: it creates network namespaces and starts engines"
    local tool
    for tool in ip unshare dockerd containerd docker docker-registry; do
        command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install iproute2 docker.io docker-registry)"
    done
    [ ! -e "$DIR" ] || die "$DIR exists: the nodes are up (or a failed run left it); run \`$0 down\` first"
    local taken
    taken=$(ip -4 route show | awk -v net="$NET." 'index($1, net) == 1 { print $1 }')
    [ -z "$taken" ] || die "MULTINODE_NET=$NET: this host already routes $taken; choose another /24"
    for name in $HUB $(for n in "${NODES[@]}"; do ns "$n"; done); do
        [ ! -e "/run/netns/$name" ] || die "network namespace $name exists (another run?); \`$0 down\` removes it"
    done
}

network_up() {
    # `ip netns add` bind-mounts /run/netns onto itself; down undoes that unless it was there before.
    mountpoint -q /run/netns 2>/dev/null || touch "$DIR/unmount-run-netns"
    [ -d /run/netns ] || touch "$DIR/remove-run-netns"
    ip netns add "$HUB"
    ip -n "$HUB" link set lo up
    ip -n "$HUB" link add "$BRIDGE" type bridge
    ip -n "$HUB" addr add "$NET.1/24" dev "$BRIDGE"
    ip -n "$HUB" link set "$BRIDGE" up
    for n in "${NODES[@]}"; do
        ip netns add "$(ns "$n")"
        ip -n "$(ns "$n")" link set lo up
        # Created inside the hub, its peer inside the node: nothing appears in this host's namespace.
        ip -n "$HUB" link add "$PREFIX-h$n" type veth peer name eth0 netns "$(ns "$n")"
        ip -n "$HUB" link set "$PREFIX-h$n" master "$BRIDGE" up
        ip -n "$(ns "$n")" addr add "$(address "$n")/24" dev eth0
        ip -n "$(ns "$n")" link set eth0 up
    done
    # The one link into this host's namespace; its peer is in the hub, so deleting the hub deletes it.
    ip link add "$CLIENT" type veth peer name "$PREFIX-hc" netns "$HUB"
    ip -n "$HUB" link set "$PREFIX-hc" master "$BRIDGE" up
    ip addr add "$CLIENT_ADDRESS/24" dev "$CLIENT"
    ip link set "$CLIENT" up
}

registry_up() {
    mkdir -p "$DIR/registry/data"
    cat >"$DIR/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/registry/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY
EOF
    setsid ip netns exec "$HUB" sh -c "echo \$\$ >'$DIR/registry/pid'; exec docker-registry serve '$DIR/registry/config.yml'" \
        </dev/null >>"$DIR/registry/log" 2>&1 &
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://$REGISTRY/v2/" && return 0
        sleep 0.1
    done
    die "the registry did not answer on $REGISTRY: $(tail -n 3 "$DIR/registry/log")"
}

node_flags() {
    if [ "$IPTABLES" = 1 ]; then echo "--bridge=none"; else echo "--iptables=false --bridge=none"; fi
}

start_node() {
    local n=$1 dir; dir=$(node_dir "$n")
    mkdir -p "$dir"
    rm -f "$dir/docker.pid" "$dir/containerd.pid"
    # shellcheck disable=SC2046 # the flags are words
    setsid ip netns exec "$(ns "$n")" unshare --uts "$SELF" _node "$n" $(node_flags) \
        </dev/null >>"$dir/node.log" 2>&1 &
    for _ in $(seq 300); do
        d "$n" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "node $(ns "$n") did not start: $(tail -n 3 "$dir/dockerd.log" 2>/dev/null)"
}

swarm_up() {
    d 1 swarm init --advertise-addr "$(address 1)" --listen-addr "$(address 1):2377" >/dev/null
    d 1 swarm update --dispatcher-heartbeat "$HEARTBEAT" >/dev/null
    local token; token=$(d 1 swarm join-token -q worker)
    for n in "${NODES[@]:1}"; do
        d "$n" swarm join --token "$token" --advertise-addr "$(address "$n")" \
            --listen-addr "$(address "$n"):2377" "$(address 1):2377" >/dev/null
    done
    d 1 node update --label-add "$EDGE_LABEL" "$(ns "$EDGE")" >/dev/null
    local ready
    for _ in $(seq 300); do
        ready=$(d 1 node ls --format '{{.Status}}' | grep -c '^Ready$' || true)
        [ "$ready" = "${#NODES[@]}" ] && return 0
        sleep 0.1
    done
    die "only $ready of ${#NODES[@]} nodes Ready: $(d 1 node ls 2>&1 | tr '\n' ' ')"
}

up() {
    preflight
    mkdir -p "$DIR"
    trap 'log "up failed; removing what it made"; down >/dev/null 2>&1 || true' ERR
    local started=$SECONDS
    grep -E '^\S+ /sys/fs/cgroup' /proc/self/mounts >"$CGROUP_CONTROLLERS_FILE"
    network_up
    registry_up
    for n in "${NODES[@]}"; do start_node "$n"; done
    swarm_up
    trap - ERR
    log "up in $((SECONDS - started)) s: manager $(ns 1) ($(address 1)), edge $(ns "$EDGE") ($(address "$EDGE")," \
        "label $EDGE_LABEL), registry $REGISTRY, this host $CLIENT_ADDRESS; for make: eval \"\$($0 env)\""
}

# --- using it ----------------------------------------------------------------------------------------

# This run's knobs, for a command line that must find the same nodes.
knobs() {
    echo "MULTINODE_DIR=$DIR MULTINODE_PREFIX=$PREFIX MULTINODE_NET=$NET MULTINODE_IPTABLES=$IPTABLES"
}

env_lines() {
    [ -S "$(node_dir 1)/docker.sock" ] || die "the nodes are not up: \`$0 up\`"
    cat <<EOF
export DOCKER_HOST=$(socket 1)
export RUNTIME=swarm
export SWARM_REGISTRY=$REGISTRY/blueprint
export SWARM_NGINX_CONSTRAINT='node.labels.blueprint.edge == true'
export COMPOSE_PUBLISH_ADDRESS=0.0.0.0
# nginx answers only its NGINX_SERVER_NAMES (else a JSON 421): clients here name the edge node by address.
export NGINX_SERVER_NAMES='localhost $(address "$EDGE")'
export DRILL_NODE_DOWN='$(knobs) $SELF stop {node}'
export DRILL_NODE_UP='$(knobs) $SELF start {node}'
EOF
}

load_images() {
    [ "$#" -gt 0 ] || die "load-images: name the images (e.g. \$PYTHON_IMAGE \$NGINX_IMAGE)"
    docker save "$@" | d 1 load -q >/dev/null
    log "loaded into $(ns 1): $*"
}

status() {
    local n
    for n in "${NODES[@]}"; do
        local pid; pid=$(pid_of "$(node_dir "$n")/docker.pid")
        printf '%s %s dockerd %s, link %s\n' "$(ns "$n")" "$(address "$n")" \
            "$(alive "$pid" && echo "pid $pid" || echo stopped)" \
            "$(ip -n "$(ns "$n")" -br link show eth0 2>/dev/null | awk '{ print $2 }' || echo none)"
    done
    d 1 node ls 2>/dev/null || true
}

stop_node() {
    local n; n=$(node_number "$1")
    local dir; dir=$(node_dir "$n")
    local dockerd containerd
    dockerd=$(pid_of "$dir/docker.pid")
    containerd=$(pid_of "$dir/containerd.pid")
    if alive "$dockerd"; then kill "$dockerd"; fi
    # dockerd stops its containers first (each within its stop grace period), then exits.
    [ -z "$dockerd" ] || reap "$dockerd" 600
    [ -z "$containerd" ] || reap "$containerd" 100
    # Shims of containers dockerd did not stop (it was killed): still in the node's namespace.
    for pid in $(ip netns pids "$(ns "$n")" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
}

start_again() {
    local n; n=$(node_number "$1")
    alive "$(pid_of "$(node_dir "$n")/docker.pid")" && die "$(ns "$n") is running"
    start_node "$n"
}

link() {
    local n; n=$(node_number "$2")
    ip -n "$(ns "$n")" link set eth0 "$1"
}

# --- down: whatever exists of it, in any state ---------------------------------------------------------

cgroups_down() {
    # runc leaves each node's --cgroup-parent directory behind in every hierarchy.
    # A container whose shim was killed still has its processes there: they go first.
    local n dir pid
    for n in "${NODES[@]}"; do
        while read -r dir; do
            [ -n "$dir" ] || continue
            for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            for _ in $(seq 20); do rmdir "$dir" 2>/dev/null && break; sleep 0.1; done
        done < <(find /sys/fs/cgroup -maxdepth 3 -depth -type d -path "*/$(ns "$n")*" 2>/dev/null)
    done
}

down() {
    local n name
    # In parallel: an engine gives each container it still runs 10 s to stop.
    for n in "${NODES[@]}"; do
        if [ -d "$(node_dir "$n")" ]; then stop_node "$n" & fi
    done
    wait
    local registry; registry=$(pid_of "$DIR/registry/pid")
    if alive "$registry"; then kill "$registry"; reap "$registry" 50; fi
    # Anything else still in one of the namespaces (a container's shim after a killed dockerd, ...).
    for name in $HUB $(for n in "${NODES[@]}"; do ns "$n"; done); do
        for pid in $(ip netns pids "$name" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    done
    cgroups_down
    for name in $HUB $(for n in "${NODES[@]}"; do ns "$n"; done); do
        if [ -e "/run/netns/$name" ]; then ip netns del "$name"; fi
    done
    if ip link show "$CLIENT" >/dev/null 2>&1; then ip link del "$CLIENT"; fi
    if [ -e "$DIR/unmount-run-netns" ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
        umount /run/netns 2>/dev/null || true
        if [ -e "$DIR/remove-run-netns" ]; then rmdir /run/netns 2>/dev/null || true; fi
    fi
    # Container mounts under the node dirs live in the nodes' own mount namespaces, gone with their
    # processes; a mount of this namespace under DIR would stop rm, so say so instead of removing around it.
    if grep -qF " $DIR/" /proc/self/mounts; then die "mounts left under $DIR: $(grep -F " $DIR/" /proc/self/mounts | cut -d' ' -f2)"; fi
    rm -rf "$DIR"
    log "down: no namespaces, links, daemons or files of it left"
}

case "${1:-}" in
    _node) shift; node_main "$@" ;;
    up) up ;;
    env) env_lines ;;
    load-images) shift; load_images "$@" ;;
    status) status ;;
    stop) stop_node "${2:-}" ;;
    start) start_again "${2:-}" ;;
    cut) link down "${2:-}" ;;
    restore) link up "${2:-}" ;;
    down) down ;;
    *) sed -n '2,19p' "$SELF" >&2; exit 2 ;;
esac
