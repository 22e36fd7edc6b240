"""The timeout lab: drive short-lived stacks into each failure on purpose and print what was observed.

Each experiment is a name, the knobs it overrides and a probe that provokes one failure and returns the
observed row: which layer gave up first, what the client saw (status and the JSON body's `layer`), how long
the answer took, and the ordering rule of ../shared/notes/failure-modes.md it keeps or breaks. The runner
starts one local stack per distinct set of knobs on free ports (deploy/stackctl/stack.py), with timeouts of
1-3 s so the whole lab takes well under a minute, and stops it again. Several experiments break an ordering
rule on purpose: their stacks start with the rules not enforced (what ALLOW_UNSAFE_CONFIG=1 does for
`make up`), and each row records what the rules say about its knobs.

    python -m loadtest.timeout_lab              # every experiment, then the table
    python -m loadtest.timeout_lab --only app-timeout --format json
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console
from rich.table import Table

from deploy.stackctl import rules, stack
from deploy.stackctl.config import ROOT
from deploy.stackctl.envargs import EnvParser
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import free_port_knobs
from service.settings import ConfigError, Settings

DEFAULT_RUN_ROOT = ROOT / ".run" / "timeout-lab"


@dataclass(frozen=True)
class Row:
    """One observed outcome. `facts` holds the raw evidence (pids, statuses, log lines) for tests."""

    experiment: str
    gave_up_first: str
    client_saw: str
    status: int | None
    layer: str | None
    seconds: float
    rule: str
    evidence: str
    check: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Observed:
    """What one HTTP request through nginx came back with (or that the client gave up)."""

    status: int | None
    body: dict[str, Any]
    seconds: float
    request_id: str
    client_error: str | None = None

    @property
    def layer(self) -> str | None:
        value = self.body.get("layer")
        return str(value) if value is not None else None

    @property
    def client_saw(self) -> str:
        if self.status is None:
            return f"its own timeout ({self.client_error})"
        error = self.body.get("error")
        kind = "JSON" if self.body else "non-JSON"
        return f"{kind} {self.status}" + (f" {error}" if error else "")


@dataclass
class LabStack:
    """A running local stack of the lab (a stack.Handle) with the probes' ways to talk to it."""

    handle: stack.Handle

    @property
    def settings(self) -> Settings:
        return self.handle.settings

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def client_timeout(self) -> float:
        return self.settings.locust_client_timeout

    def get(self, path: str, timeout: float | None = None) -> Observed:
        request_id = f"lab-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        try:
            response = httpx2.get(
                f"{self.url}{path}",
                timeout=self.client_timeout if timeout is None else timeout,
                headers={"X-Request-ID": request_id},
            )
        except httpx2.TimeoutException as error:
            return Observed(None, {}, time.monotonic() - started, request_id, type(error).__name__)
        seconds = time.monotonic() - started
        try:
            body = response.json()
        except ValueError:
            body = {}
        return Observed(response.status_code, body if isinstance(body, dict) else {}, seconds, request_id)

    def get_many(self, paths: list[str], stagger: float = 0.0) -> list[Observed]:
        """Send requests concurrently, each on its own connection; `stagger` seconds between starts."""
        with ThreadPoolExecutor(max_workers=len(paths)) as pool:
            futures = []
            for path in paths:
                futures.append(pool.submit(self.get, path))
                time.sleep(stagger)
            return [future.result() for future in futures]

    def worker_pids(self) -> list[int]:
        return self.handle.worker_pids()

    def nginx_log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for text in self.handle.logs()["nginx"].read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def gunicorn_log(self) -> str:
        return self.handle.logs()["gunicorn"].read_text(errors="replace")


@dataclass(frozen=True)
class Experiment:
    name: str
    knobs: Mapping[str, str]
    rule: str  # the ordering rule kept or broken, with {setting} fields filled from the stack's settings
    probe: Callable[[LabStack, str], Row]

    def run(self, lab: LabStack) -> Row:
        row = self.probe(lab, self.rule.format(**lab.settings.model_dump()))
        return replace(row, experiment=self.name, check=check_verdict(self.knobs))


def check_verdict(knobs: Mapping[str, str]) -> str:
    """What `make check` says about the experiment's knobs: `passes` or the rules it refuses."""
    broken = rules.errors(stack.findings(knobs, base={}))
    return "refuses: " + ", ".join(sorted({f.rule for f in broken})) if broken else "passes"


def row_from(seen: Observed, rule: str, evidence: str, **facts: Any) -> Row:
    return Row(
        experiment="",
        gave_up_first="client" if seen.status is None else seen.layer or "?",
        client_saw=seen.client_saw,
        status=seen.status,
        layer=seen.layer,
        seconds=round(seen.seconds, 2),
        rule=rule,
        evidence=evidence,
        facts={"request_id": seen.request_id, "body": seen.body, **facts},
    )


# --- probes -------------------------------------------------------------------------------------------


def probe_slow_request(stack: LabStack, rule: str) -> Row:
    """A slow request that outlives the shorter of APP_REQUEST_TIMEOUT and NGINX_PROXY_READ_TIMEOUT."""
    settings = stack.settings
    delay = max(settings.app_request_timeout, settings.nginx_proxy_read_timeout) + 1
    seen = stack.get(f"/api/slow?delay={delay:g}")
    return row_from(seen, rule, str(seen.body.get("detail", "")), delay=delay)


def probe_blocked_worker(stack: LabStack, rule: str) -> Row:
    """Two requests wait on the one worker; a third blocks its event loop past GUNICORN_TIMEOUT.

    The stack's NGINX_UPSTREAM_KEEPALIVE_TIMEOUT is 1 s and the probe waits it out first: a request that
    fails on a *reused* upstream connection is retried by nginx (on the respawned worker), which would hide
    the 502 this row is about. TUNING.md shows that retry.
    """
    settings = stack.settings
    time.sleep(settings.nginx_upstream_keepalive_timeout + 0.5)
    old_pid = stack.worker_pids()[0]
    delay = settings.app_expected_blocking
    in_flight = [f"/api/slow?delay={delay}", f"/api/slow?delay={delay}", f"/api/blocking?delay={delay}"]
    answers = stack.get_many(in_flight, stagger=0.2)

    new_pid, respawn_seconds = None, None
    started = time.monotonic()
    while time.monotonic() - started < 30:
        ping = stack.get("/api/ping", timeout=5)
        if ping.status == 200 and ping.body.get("pid") != old_pid:
            new_pid, respawn_seconds = ping.body.get("pid"), round(time.monotonic() - started, 2)
            break
        time.sleep(0.2)
    marker = f"WORKER TIMEOUT (pid:{old_pid})"
    logged = next((line for line in stack.gunicorn_log().splitlines() if marker in line), None)
    blocking = answers[-1]
    statuses = [a.status for a in answers]
    evidence = (
        f"the {len(answers)} in-flight requests got {', '.join(str(s) for s in statuses)}; "
        f"gunicorn.log: {marker if logged else 'no WORKER TIMEOUT line'}; "
        f"new worker pid {new_pid} answers"
    )
    return row_from(
        blocking,
        rule,
        evidence,
        statuses=statuses,
        layers=[a.layer for a in answers],
        old_pid=old_pid,
        new_pid=new_pid,
        respawn_seconds=respawn_seconds,
        worker_timeout_log_line=logged,
    )


def probe_limit_concurrency(stack: LabStack, rule: str) -> Row:
    """More concurrent connections to the one worker than UVICORN_LIMIT_CONCURRENCY allows."""
    count = stack.settings.uvicorn_limit_concurrency * 2
    answers = stack.get_many([f"/api/slow?delay=1.5&n={i}" for i in range(count)])
    refused = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status == 200]
    first = min(refused, key=lambda a: a.seconds) if refused else answers[0]
    evidence = (
        f"{len(refused)} of {count} concurrent /api/slow refused at once, {len(served)} served after 1.5 s"
    )
    return row_from(
        first,
        rule,
        evidence,
        statuses=[a.status for a in answers],
        refused_layers=sorted({str(a.layer) for a in refused}),
        refused_max_seconds=max((a.seconds for a in refused), default=None),
        served_min_seconds=min((a.seconds for a in served), default=None),
    )


def probe_rate_limit(stack: LabStack, rule: str) -> Row:
    answers = [stack.get("/api/ping") for _ in range(5)]
    limited = [a for a in answers if a.status == 429]
    first = limited[0] if limited else answers[-1]
    evidence = f"{len(answers) - len(limited)} of {len(answers)} back-to-back /api/ping passed, the rest 429"
    return row_from(first, rule, evidence, statuses=[a.status for a in answers])


def probe_connection_limit(stack: LabStack, rule: str) -> Row:
    with ThreadPoolExecutor(max_workers=1) as pool:
        holder = pool.submit(stack.get, "/api/slow?delay=2")
        time.sleep(0.5)
        second = stack.get("/api/ping")
        held = holder.result()
    evidence = f"a 2nd connection while /api/slow held the first; the holder still got {held.status}"
    return row_from(second, rule, evidence, holder_status=held.status)


def probe_client_gives_up(stack: LabStack, rule: str) -> Row:
    """The client's timeout (LOCUST_CLIENT_TIMEOUT) is the shortest: it leaves and nginx logs 499."""
    delay = stack.settings.app_request_timeout + 1
    seen = stack.get(f"/api/slow?delay={delay:g}")
    logged: dict[str, Any] | None = None
    deadline = time.monotonic() + 5
    while logged is None and time.monotonic() < deadline:
        logged = next((x for x in stack.nginx_log_lines() if x.get("request_id") == seen.request_id), None)
        time.sleep(0.1)
    nginx_status = logged.get("status") if logged else None
    evidence = f"nginx.log: status {nginx_status} for request_id {seen.request_id}"
    return row_from(seen, rule, evidence, nginx_log_status=nginx_status)


ONE_WORKER = {"WEB_CONCURRENCY": "1"}

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "app-timeout",
        {**ONE_WORKER, "APP_REQUEST_TIMEOUT": "1", "NGINX_PROXY_READ_TIMEOUT": "3"},
        "3 kept: APP_REQUEST_TIMEOUT={app_request_timeout:g}s < NGINX_PROXY_READ_TIMEOUT="
        "{nginx_proxy_read_timeout}s < client {locust_client_timeout:g}s",
        probe_slow_request,
    ),
    Experiment(
        "nginx-read-timeout",
        {**ONE_WORKER, "APP_REQUEST_TIMEOUT": "3", "NGINX_PROXY_READ_TIMEOUT": "1"},
        "3 broken: NGINX_PROXY_READ_TIMEOUT={nginx_proxy_read_timeout}s < APP_REQUEST_TIMEOUT="
        "{app_request_timeout:g}s",
        probe_slow_request,
    ),
    Experiment(
        "worker-timeout",
        {
            **ONE_WORKER,
            "GUNICORN_TIMEOUT": "2",
            "APP_STARTUP_TIMEOUT": "1.5",  # the startup half of rule 5 holds: only the blocking half breaks
            "APP_EXPECTED_BLOCKING": "6",  # how long the probe's /api/blocking holds the loop
            "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "1",
        },
        "5 broken: event loop blocked APP_EXPECTED_BLOCKING={app_expected_blocking:g}s > "
        "GUNICORN_TIMEOUT={gunicorn_timeout}s",
        probe_blocked_worker,
    ),
    Experiment(
        "uvicorn-limit-concurrency",
        {**ONE_WORKER, "UVICORN_LIMIT_CONCURRENCY": "4"},
        "7 broken: UVICORN_LIMIT_CONCURRENCY={uvicorn_limit_concurrency} < connections per worker "
        "(NGINX_UPSTREAM_KEEPALIVE={nginx_upstream_keepalive} idle + in flight)",
        probe_limit_concurrency,
    ),
    Experiment(
        "nginx-rate-limit",
        {"NGINX_LIMIT_REQ_ENABLED": "1", "NGINX_LIMIT_REQ_RATE": "1", "NGINX_LIMIT_REQ_BURST": "1"},
        "none: per-client guard NGINX_LIMIT_REQ_RATE={nginx_limit_req_rate}r/s, "
        "NGINX_LIMIT_REQ_BURST={nginx_limit_req_burst}",
        probe_rate_limit,
    ),
    Experiment(
        "nginx-connection-limit",
        {"NGINX_LIMIT_CONN_ENABLED": "1", "NGINX_LIMIT_CONN": "1"},
        "none: per-client guard NGINX_LIMIT_CONN={nginx_limit_conn} connections",
        probe_connection_limit,
    ),
    Experiment(
        "client-gives-up",
        {
            **ONE_WORKER,
            "APP_REQUEST_TIMEOUT": "2",
            "NGINX_PROXY_READ_TIMEOUT": "3",
            "LOCUST_CLIENT_TIMEOUT": "1",
        },
        "3 broken: client LOCUST_CLIENT_TIMEOUT={locust_client_timeout:g}s < APP_REQUEST_TIMEOUT="
        "{app_request_timeout:g}s < NGINX_PROXY_READ_TIMEOUT={nginx_proxy_read_timeout}s",
        probe_client_gives_up,
    ),
]
BY_NAME = {experiment.name: experiment for experiment in EXPERIMENTS}


# --- runner -------------------------------------------------------------------------------------------


QUIET_LOGS = {"GUNICORN_LOG_LEVEL": "warning", "APP_LOG_LEVEL": "warning"}


@contextlib.contextmanager
def lab_stack(run_dir: Path, knobs: Mapping[str, str]) -> Iterator[LabStack]:
    """A fresh local stack with defaults + these knobs only (a `.env` or an exported knob must not change
    what the lab shows), on free ports; stopped when the block ends."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    chosen = {**free_port_knobs("local"), **QUIET_LOGS, **knobs}
    with stack.running("local", chosen, run_dir, base=stack.isolated_base(), enforce_rules=False) as handle:
        yield LabStack(handle)


def groups(experiments: Iterable[Experiment]) -> list[list[Experiment]]:
    """Experiments with identical knobs share one stack."""
    grouped: dict[tuple[tuple[str, str], ...], list[Experiment]] = {}
    for experiment in experiments:
        grouped.setdefault(tuple(sorted(experiment.knobs.items())), []).append(experiment)
    return list(grouped.values())


def run_lab(
    experiments: Iterable[Experiment] = EXPERIMENTS,
    run_root: Path = DEFAULT_RUN_ROOT,
    on_start: Callable[[Experiment], None] | None = None,
) -> list[Row]:
    rows: list[Row] = []
    for group in groups(experiments):
        with lab_stack(run_root / group[0].name, group[0].knobs) as stack:
            for experiment in group:
                if on_start:
                    on_start(experiment)
                rows.append(experiment.run(stack))
    return rows


def run_experiment(name: str, run_root: Path = DEFAULT_RUN_ROOT) -> Row:
    return run_lab([BY_NAME[name]], run_root)[0]


def table(rows: list[Row]) -> Table:
    view = Table(title="Timeout lab — observed", show_lines=True)
    for column in ("experiment", "gave up first", "client saw", "status", "body layer", "time"):
        view.add_column(column)
    view.add_column("ordering rule", max_width=40)
    view.add_column("make check", max_width=24)
    view.add_column("evidence", max_width=60)
    for row in rows:
        view.add_row(
            row.experiment,
            row.gave_up_first,
            row.client_saw,
            str(row.status or "-"),
            row.layer or "-",
            f"{row.seconds:.2f} s",
            row.rule,
            row.check,
            row.evidence,
        )
    return view


def markdown(rows: list[Row]) -> str:
    lines = [
        "| experiment | gave up first | client saw | status | body layer | time | ordering rule | make check "
        "| evidence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.experiment, row.gave_up_first, row.client_saw, str(row.status or "-"), row.layer or "-"]
        cells += [f"{row.seconds:.2f} s", row.rule, row.check, row.evidence]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = EnvParser(prog="timeout-lab", description=__doc__.split("\n\n")[0], tool="timeout-lab")
    parser.add_argument("--only", action="append", choices=sorted(BY_NAME), help="run only this experiment")
    parser.add_argument("--run-root", type=Path, default=DEFAULT_RUN_ROOT, help="where the stacks keep logs")
    parser.add_argument("--format", env="LAB_FORMAT")
    args = parser.parse_args(argv)
    chosen = [BY_NAME[name] for name in args.only] if args.only else EXPERIMENTS
    console = Console(stderr=True)
    started = time.monotonic()
    try:
        with console.status("starting the lab's first stack ...") as status:
            rows = run_lab(
                chosen, args.run_root, lambda e: status.update(f"experiment {e.name} (knobs {dict(e.knobs)})")
            )
    except (ConfigError, StackError) as error:
        print(f"timeout-lab: {error}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    elif args.format == "markdown":
        print(markdown(rows))
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(table(rows))
    console.print(f"{len(rows)} experiments in {time.monotonic() - started:.0f} s; logs in {args.run_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
