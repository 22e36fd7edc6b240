"""One sample a second from what a Source read (sources.Raw): the JSON object written as one line of
`stack-series.jsonl`. loadtest/README.md documents every field; SCHEMA below is that list, checked by a test.

Rates are differences over the time between two samples; a counter that went down (a restarted master) is
counted from 0, and so is a labelled series that first appears after its instance's first sample (the first
504 of a route). A worker is one pid (container:pid with containers); it `started` when first seen and
`ended` when its series went, with the reason the master recorded (`app_worker_exit_time_seconds`), or
`gone` when none is known (its container went, or the master too). A pid that comes back with another
start time is another worker: a restarted container numbers its processes as the one before did.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loadtest.sampler.exposition import Exposition
from loadtest.sampler.sources import Raw

# The fields of one sample, with the unit of each (the README's table).
SCHEMA: dict[str, str] = {
    "t": "unix time of the sample (s)",
    "elapsed_s": "seconds since the sampler started",
    "workers_alive": "app worker processes with live series",
    "workers": "one object per live worker, WORKER_SCHEMA",
    "started": "workers first seen in this sample: {id, instance, pid, at}",
    "ended": "workers whose series went since the last sample: {id, instance, pid, reason, at}",
    "nginx": "stub_status and the access lines of this sample, NGINX_SCHEMA",
    "answers": "access lines of this sample by status: {status: count}",
    "by_layer": "answers >= 400 by who gave them: {app|uvicorn|nginx: {status: count}}",
    "errors": "what could not be read for this sample",
    "sampler_cpu_percent": "CPU of the sampler's own thread since the last sample (% of one CPU)",
}
WORKER_SCHEMA: dict[str, str] = {
    "id": "pid, or container:pid",
    "instance": "the container's name ('' on the local runtime)",
    "pid": "the worker's pid (in its container)",
    "in_flight": "HTTP requests it is serving",
    "rps": "HTTP requests it answered per second",
    "lag_max_ms": "largest event-loop lag of its last second, or how long it has been stalled if longer",
    "lag_p99_ms": "99th percentile of its event-loop lag over 10 s",
    "stalled": "true when its probe has not run for APP_LOOP_LAG_INTERVAL + 0.1 s: its loop is blocked now",
    "websockets": "WebSockets it holds open",
    "rss_mb": "resident memory (MiB)",
    "cpu_percent": "CPU since the last sample (% of one CPU)",
    "up_s": "seconds since its event loop began serving",
}
NGINX_SCHEMA: dict[str, str] = {
    "active": "client connections open (stub_status Active connections)",
    "reading": "connections reading a request header",
    "writing": "connections writing an answer (requests in progress, WebSockets)",
    "waiting": "idle keep-alive connections",
    "rps": "requests per second (stub_status, less the sampler's own)",
    "lines": "access lines read in this sample",
    "upstream_ms": "the app's answer time as nginx saw it ($upstream_response_time, every attempt) over "
    "up to 1,000 lines of the sample: {p50, p99, max, n}",
}

STUB = re.compile(
    r"Active connections:\s*(\d+).*?\n\s*\d+\s+\d+\s+(\d+).*?"
    r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)",
    re.S,
)
# Fields of nginx's blueprint_json access line, each found over all of a sample's bytes at once: a loaded
# stack writes thousands of lines a second, and a parse per line in Python would cost the sampler a tenth of
# a CPU. Other lines (nginx's error log shares the local runtime's file) do not match.
STATUS = re.compile(rb',"status":(\d+)')
NGINX_ERROR = re.compile(rb',"status":([45]\d\d),[^\n]*"upstream_header_time":"([^"]*)"')
UPSTREAM_TIME = re.compile(rb'"upstream_response_time":"([^"]*)"')
UPSTREAM_FIELD = b'"upstream_response_time":"'
TIMED = 1000  # lines per sample whose upstream time is read, evenly spread over them
ERROR_STATUS = 400
# A worker's probe writes its heartbeat every APP_LOOP_LAG_INTERVAL: an older one, by more than this (a
# late timer, the scrape's own time), is a loop stalled now.
STALL_SLACK_S = 0.1
SAME_START_S = 0.5  # a worker's start time read again: more apart than this, it is another process


def stub_status(text: str | None) -> dict[str, int] | None:
    found = STUB.search(text or "")
    if found is None:
        return None
    active, requests, reading, writing, waiting = (int(g) for g in found.groups())
    return {
        "active": active,
        "requests": requests,
        "reading": reading,
        "writing": writing,
        "waiting": waiting,
    }


def last_attempt(value: str) -> str:
    """nginx lists one value per upstream attempt (`, `) and per internal redirect (` : `)."""
    return re.split(r"[,:]", value)[-1].strip()


def total_seconds(value: str) -> float | None:
    parts = [p.strip() for p in re.split(r"[,:]", value)]
    numbers = [float(p) for p in parts if p and p != "-"]
    return sum(numbers) if numbers else None


@dataclass
class Access:
    """What one sample's access lines say: answers by status, nginx's own errors, upstream times (ms)."""

    answers: Counter[str] = field(default_factory=Counter)
    nginx_errors: Counter[str] = field(default_factory=Counter)
    upstream_ms: list[float] = field(default_factory=list)


def access(log: bytes) -> Access:
    """nginx answered an error itself when its last upstream attempt sent no header (`-`) or there was
    none: its own limits and edge errors, 502/504 when the app failed, 499 when the client gave up."""
    # Each pass over a sample's bytes costs ~0.5 ms per MB (~2,500 lines): one pass for the statuses, one
    # more only when there are errors, and the upstream times found from evenly spaced offsets.
    found = Access()
    for status, count in Counter(STATUS.findall(log)).items():
        found.answers[status.decode()] = count
    if not found.answers:
        return access_by_json(log) if b"{" in log else found
    if any(int(status) >= ERROR_STATUS for status in found.answers):
        for status, header in NGINX_ERROR.findall(log):
            if last_attempt(header.decode()) in ("", "-"):
                found.nginx_errors[status.decode()] += 1
    for value in upstream_times(log, found.answers.total()):
        if value[:1].isdigit() and b"," not in value and b":" not in value:
            found.upstream_ms.append(float(value) * 1000)
        else:  # "-" (nginx did not ask the app), or several attempts
            seconds = total_seconds(value.decode())
            if seconds is not None:
                found.upstream_ms.append(seconds * 1000)
    return found


def upstream_times(log: bytes, lines: int) -> list[bytes]:
    """$upstream_response_time of at most TIMED of the sample's `lines`, evenly spread: past TIMED lines, the
    first field found after each of TIMED evenly spaced offsets (a find each, not a pass over the bytes)."""
    if lines <= TIMED:
        return list(UPSTREAM_TIME.findall(log))
    times: list[bytes] = []
    previous = -1
    for step in range(TIMED):
        start = log.find(UPSTREAM_FIELD, step * len(log) // TIMED)
        if start < 0:
            break
        if start == previous:
            continue
        previous = start
        begin = start + len(UPSTREAM_FIELD)
        times.append(log[begin : log.find(b'"', begin)])
    return times


def access_by_json(log: bytes) -> Access:
    """The slow way, for an access log format without the template's field order."""
    found = Access()
    for line in log.decode("utf-8", "replace").splitlines():
        try:
            data = json.loads(line)
            status = int(data["status"])
        except (ValueError, KeyError, TypeError):
            continue
        found.answers[str(status)] += 1
        if status >= ERROR_STATUS and last_attempt(str(data.get("upstream_header_time", ""))) in ("", "-"):
            found.nginx_errors[str(status)] += 1
        seconds = total_seconds(str(data.get("upstream_response_time", "")))
        if seconds is not None:
            found.upstream_ms.append(seconds * 1000)
    return found


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def rounded(value: float, digits: int = 1) -> float:
    return round(value, digits)


@dataclass
class WorkerState:
    instance: str
    pid: int
    served: float
    cpu: float
    t: float
    since: float = 0.0  # when it started (app_worker_start_time_seconds)


@dataclass
class Tracker:
    """What a sample needs of the previous one: counters, each worker's last values, who was seen."""

    started_at: float = 0.0
    interval: float = 0.1  # APP_LOOP_LAG_INTERVAL: how often each worker writes its heartbeat
    last_t: float | None = None
    workers: dict[str, WorkerState] = field(default_factory=dict)
    seen_exits: set[tuple[str, str, str]] = field(default_factory=set)
    first_exits: bool = True
    counters: dict[str, float] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)  # whose counters this tracker has read once
    nginx_requests: int | None = None

    def delta(self, key: str, value: float, known: bool = True) -> float:
        """What a counter added since the last sample; all of it when it is new on a `known` instance,
        nothing when its instance is read for the first time (what it counted before the run)."""
        before = self.counters.get(key)
        self.counters[key] = value
        if before is None:
            return value if known else 0.0
        return value - before if value >= before else value

    def sample(self, raw: Raw, sampler_cpu_percent: float = 0.0) -> dict[str, Any]:
        first = self.last_t is None
        dt = raw.t - self.last_t if self.last_t is not None else 0.0
        self.last_t = raw.t
        errors = [
            *raw.errors,
            *(f"app {a.instance or 'metrics'}: {a.error}" for a in raw.apps if a.text is None),
        ]
        alive: dict[str, dict[str, Any]] = {}
        recorded: dict[str, dict[str, Any]] = {}
        by_layer: dict[str, Counter[str]] = {"app": Counter(), "uvicorn": Counter(), "nginx": Counter()}
        for app in raw.apps:
            if app.text is None:
                continue
            exposition = Exposition(app.text)
            known = app.instance in self.instances
            self.instances.add(app.instance)
            alive.update((w["id"], w) for w in self.workers_of(app.instance, exposition, raw.t))
            recorded.update((e["id"], e) for e in self.exits_of(app.instance, exposition))
            for labels, value in exposition.get("app_requests_total"):
                status = labels.get("status", "")
                if status.isdigit() and int(status) >= ERROR_STATUS:
                    key = f"{app.instance}|{status}|{labels.get('route')}|{labels.get('method')}"
                    answered = int(self.delta(key, value, known))
                    if answered:
                        by_layer["app"][status] += answered
            rejected = self.delta(
                f"{app.instance}|uvicorn", exposition.total("app_uvicorn_rejected_total"), known
            )
            if rejected:
                by_layer["uvicorn"]["503"] += int(rejected)
        self.first_exits = False
        for wid in recorded:
            alive.pop(wid, None)  # its series may linger a moment after the master recorded its end
        # An instance that did not answer keeps its workers until it answers again or is no longer listed.
        silent = {a.instance for a in raw.apps if a.text is None}
        carried = {
            wid: state
            for wid, state in self.workers.items()
            if (state.instance in silent or not raw.apps) and wid not in recorded  # nothing read: all carried
        }
        gone = [
            wid
            for wid in self.workers
            if (wid not in alive or alive[wid]["_reborn"]) and wid not in recorded and wid not in carried
        ]
        ended = list(recorded.values()) + [
            {
                "id": wid,
                "instance": self.workers[wid].instance,
                "pid": self.workers[wid].pid,
                "reason": "gone",
            }
            | {"at": round(raw.t, 3)}
            for wid in gone
        ]
        started = [
            {"id": wid, "instance": w["instance"], "pid": w["pid"], "at": w["started_at"]}
            for wid, w in alive.items()
            if (wid not in self.workers or w["_reborn"]) and not first  # the first finds them running
        ]
        self.workers = {
            **carried,
            **{
                wid: WorkerState(w["instance"], w["pid"], w["_served"], w["_cpu"], raw.t, w["started_at"])
                for wid, w in alive.items()
            },
        }
        workers = [
            {k: v for k, v in w.items() if not k.startswith("_") and k != "started_at"}
            for w in alive.values()
        ]

        nginx: dict[str, Any] = {}
        stub = stub_status(raw.stub)
        if stub is not None:
            requests = stub.pop("requests")
            before, self.nginx_requests = self.nginx_requests, requests
            nginx.update(stub)
            if before is not None and dt > 0:
                nginx["rps"] = rounded(max(0, requests - before - raw.own_nginx_requests) / dt)
        lines = access(raw.log)
        by_layer["nginx"] = lines.nginx_errors
        nginx["lines"] = sum(lines.answers.values())
        if lines.upstream_ms:
            upstream = sorted(lines.upstream_ms)
            nginx["upstream_ms"] = {
                "p50": rounded(percentile(upstream, 0.5)),
                "p99": rounded(percentile(upstream, 0.99)),
                "max": rounded(upstream[-1]),
                "n": len(upstream),
            }
        return {
            "t": round(raw.t, 3),
            "elapsed_s": round(raw.t - self.started_at, 1),
            "workers_alive": len(self.workers),
            "workers": sorted(workers, key=lambda w: (w["instance"], w["pid"])),
            "started": started,
            "ended": ended,
            "nginx": nginx,
            "answers": dict(sorted(lines.answers.items())),
            "by_layer": {layer: dict(sorted(c.items())) for layer, c in by_layer.items() if c},
            "errors": errors,
            "sampler_cpu_percent": round(sampler_cpu_percent, 2),
        }

    def workers_of(self, instance: str, exposition: Exposition, t: float) -> list[dict[str, Any]]:
        started = exposition.by_pid("app_worker_start_time_seconds")
        gauges = {
            name: exposition.by_pid(f"app_{name}")
            for name in (
                "worker_requests_in_flight",
                "worker_requests_served",
                "worker_websockets_open",
                "worker_resident_memory_bytes",
                "worker_cpu_seconds",
                "event_loop_lag_max_seconds",
                "event_loop_lag_p99_seconds",
                "event_loop_heartbeat_seconds",
            )
        }
        found = []
        for pid, since in sorted(started.items()):
            wid = f"{instance}:{pid}" if instance else str(pid)
            served = gauges["worker_requests_served"].get(pid, 0.0)
            cpu = gauges["worker_cpu_seconds"].get(pid, 0.0)
            previous = self.workers.get(wid)
            reborn = previous is not None and abs(previous.since - since) > SAME_START_S
            if reborn:
                previous = None
            span = t - previous.t if previous else 0.0
            heartbeat = gauges["event_loop_heartbeat_seconds"].get(pid, t)
            stall = max(0.0, t - heartbeat - self.interval - STALL_SLACK_S)
            lag = max(gauges["event_loop_lag_max_seconds"].get(pid, 0.0), stall)
            found.append(
                {
                    "id": wid,
                    "instance": instance,
                    "pid": pid,
                    "in_flight": int(gauges["worker_requests_in_flight"].get(pid, 0)),
                    "rps": rounded(max(0.0, served - previous.served) / span)
                    if previous and span > 0
                    else None,
                    "lag_max_ms": rounded(lag * 1000),
                    "lag_p99_ms": rounded(gauges["event_loop_lag_p99_seconds"].get(pid, 0.0) * 1000),
                    "stalled": stall > 0,
                    "websockets": int(gauges["worker_websockets_open"].get(pid, 0)),
                    "rss_mb": rounded(gauges["worker_resident_memory_bytes"].get(pid, 0.0) / 2**20),
                    "cpu_percent": rounded(max(0.0, cpu - previous.cpu) / span * 100)
                    if previous and span > 0
                    else None,
                    "up_s": rounded(max(0.0, t - since)),
                    "started_at": round(since, 3),
                    "_served": served,
                    "_reborn": reborn,
                    "_cpu": cpu,
                }
            )
        return found

    def exits_of(self, instance: str, exposition: Exposition) -> list[dict[str, Any]]:
        """Exits the master recorded that this tracker has not reported yet (all of them are old news in
        the first sample)."""
        found = []
        for labels, at in exposition.get("app_worker_exit_time_seconds"):
            key = (instance, labels.get("worker", ""), labels.get("reason", ""))
            if key in self.seen_exits or not key[1].isdigit():
                continue
            self.seen_exits.add(key)
            if self.first_exits:
                continue
            wid = f"{instance}:{key[1]}" if instance else key[1]
            found.append(
                {"id": wid, "instance": instance, "pid": int(key[1]), "reason": key[2], "at": round(at, 3)}
            )
        return found
