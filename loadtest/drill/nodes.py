"""What the node-loss drill needs from a swarm beyond stack.Handle: which node to lose, its tasks'
addresses, the manager's view of nodes and tasks over time, when nginx last sent a request to one of the
lost tasks (its access log, through `docker service logs` from any node), and the node commands."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime

from deploy.stackctl import stack, swarm
from deploy.stackctl.components import APP, NGINX, REDIS
from loadtest.drill.capabilities import NODE, Site, ready_nodes
from loadtest.drill.plan import DrillError


@dataclass(frozen=True)
class Victim:
    node: str
    tasks: list[str]  # ids of the app tasks on it
    addresses: set[str]  # their addresses on the stack's overlay network


def running(tasks: list[swarm.Task], service: str) -> list[swarm.Task]:
    return [t for t in tasks if t.service == service and t.desired == t.state == "running"]


def manager(handle: stack.Handle) -> str:
    return handle.swarm_stack().docker("info", "--format", "{{.Name}}").strip()


def choose_victim(handle: stack.Handle) -> Victim:
    """A node that runs app tasks and is neither the manager `make` talks to nor an edge node (losing those
    is another drill: a manager needs 3 managers to survive, an edge node a second edge node)."""
    swarm_stack = handle.swarm_stack()
    tasks = swarm_stack.tasks()
    spared = {manager(handle)} | {t.node for t in running(tasks, NGINX.service)}
    apps = running(tasks, APP.service)
    candidates = sorted({t.node for t in apps} - spared)
    if not candidates:
        placed = ", ".join(sorted(f"{t.name} on {t.node}" for t in apps))
        raise DrillError(f"no node runs an app task without being the manager or an edge node ({placed})")
    node = candidates[0]
    mine = [t.id for t in apps if t.node == node]
    return Victim(node, mine, task_addresses(swarm_stack, mine))


def placed(handle: stack.Handle, service: str) -> str:
    """The nodes running `service`'s tasks, or "nowhere"."""
    return ", ".join(sorted({t.node for t in running(handle.swarm_stack().tasks(), service)})) or "nowhere"


def keep_redis_off(handle: stack.Handle, node: str) -> None:
    """Moves the rooms' Redis task off `node` if it runs there, before the load starts: node-loss loses app
    tasks; losing Redis (its streams start empty) is what redis-restart shows."""
    swarm_stack = handle.swarm_stack()
    if not any(t.node == node for t in running(swarm_stack.tasks(), REDIS.service)):
        return
    away = f"node.hostname!={node}"
    service = swarm_stack.full_name(REDIS.service)
    swarm_stack.docker("service", "update", "--quiet", "--detach=false", "--constraint-add", away, service)


def task_addresses(swarm_stack: swarm.Stack, task_ids: list[str]) -> set[str]:
    found = json.loads(swarm_stack.docker("inspect", *task_ids)) if task_ids else []
    return {
        address.split("/")[0]
        for task in found
        for attachment in task.get("NetworksAttachments") or []
        if not attachment.get("Network", {}).get("Spec", {}).get("Ingress")
        for address in attachment.get("Addresses") or []
    }


def node_command(template: str, node: str, what: str) -> None:
    command = template.replace(NODE, shlex.quote(node))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise DrillError(f"{what}={template!r} failed for node {node}: {last}")


@dataclass
class Recovery:
    """Seconds after the loss: the manager marks the node down; the app runs its desired tasks again, none on
    the lost node."""

    down_s: float | None = None
    rescheduled_s: float | None = None
    where: str = ""  # the nodes the replacements run on


def watch_recovery(handle: stack.Handle, victim: Victim, since: float, within: float) -> Recovery:
    swarm_stack = handle.swarm_stack()
    desired = swarm_stack.services()[APP.service].replicas
    found = Recovery()
    deadline = since + within
    while time.monotonic() < deadline and found.rescheduled_s is None:
        if found.down_s is None and node_state(swarm_stack, victim.node) == "down":
            found.down_s = time.monotonic() - since
        apps = running(swarm_stack.tasks(), APP.service)
        elsewhere = [t for t in apps if t.node != victim.node]
        if found.down_s is not None and len(elsewhere) == desired == len(apps):
            found.rescheduled_s = time.monotonic() - since
            found.where = ", ".join(sorted({t.node for t in elsewhere}))
        time.sleep(0.5)
    return found


def node_state(swarm_stack: swarm.Stack, node: str) -> str:
    return swarm_stack.docker("node", "inspect", "--format", "{{.Status.State}}", node).strip()


def heartbeat(handle: stack.Handle) -> str:
    """The swarm's dispatcher heartbeat period (`docker swarm update --dispatcher-heartbeat`), e.g. 5s."""
    period = handle.swarm_stack().docker(
        "info", "--format", "{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}"
    )
    return period.strip() or "unknown"


def last_sent(handle: stack.Handle, addresses: set[str], since: datetime) -> float | None:
    """Seconds after `since` at which nginx last sent a request to one of `addresses`: from its access log
    lines (start = when the line was logged minus request_time; the log is flushed every second, so ± 1 s),
    fetched through the manager from whichever node runs nginx. None: it sent none after `since`."""
    command = ["service", "logs", "--raw", "--timestamps", "--since", since.isoformat()]
    logs = handle.swarm_stack().docker(*command, handle.swarm_stack().full_name(NGINX.service), timeout=120)
    latest: float | None = None
    for line in logs.splitlines():
        stamp, _, text = line.partition(" ")
        if not text.startswith("{"):
            continue
        try:
            entry = json.loads(text)
            logged = datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
        except ValueError:
            continue
        upstreams = {
            part.strip().rsplit(":", 1)[0] for part in str(entry.get("upstream_addr", "")).split(",")
        }
        if upstreams & addresses:
            started = (logged - since).total_seconds() - float(entry.get("request_time") or 0)
            latest = started if latest is None else max(latest, started)
    return latest


def node_count(handle: stack.Handle) -> int:
    return len(ready_nodes(Site(handle.knob_environment())))
