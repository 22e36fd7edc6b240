"""What each change to nginx's config saves on the hop, measured in one run against the config as it is.

    python -m loadtest.bench.hop                                   # every variant, 3 rounds of 10 s
    python -m loadtest.bench.hop --variants current,pool-128 --rounds 5 --seconds 8

One blueprint stack (local runtime). For each variant a second nginx on free ports in front of the same app:
the rendered template (deploy/nginx/nginx.conf.template) with the variant's change, started by the local
runtime like the stack's own. Then, round after round, for each variant three neighbouring measurements of
`wrk -t1 -c64 GET /api/ping` (their order turned round every other round): direct on the app's bind,
through the current config, through the variant; each with the CPU per request of the app, that nginx and
the log pipes (psutil). It writes reports/hop-<time>/: hop.json (every measurement) and hop.md: per variant
the median over the rounds, the hop (through it minus the app alone beside it), and what it saved against
the current config beside it. Bad input: exit 2 with one line.

A variant that keeps every feature (`keeps`: request id, JSON access line, security headers, forwarded
headers, limits when enabled, WebSockets) can be adopted; the others measure what a feature costs.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.stackctl import local, procs, stack
from deploy.stackctl.components import NGINX, Component
from deploy.stackctl.config import ROOT, Effective
from deploy.stackctl.envargs import EnvParser
from deploy.stackctl.ports import free_port_knobs
from deploy.stackctl.rundir import RunDir
from loadtest.bench import experiment
from loadtest.bench.rows import DEFAULTS, BenchError
from loadtest.bench.wrk import run_wrk
from loadtest.host import find_wrk, load_average, machine

CURRENT = "current"
TIMEOUT_S = 10.0
DIRECT = "direct"
PATH = DEFAULTS.bench_path  # the demo's GET /api/ping, as the bench's throughput rows


def edit(pattern: str, new: str, count: int = 0) -> Callable[[str], str]:
    """A change to the rendered config: `pattern` (a regex, multiline) replaced by `new`; refused when
    the template no longer has it."""

    def change(text: str) -> str:
        changed, found = re.subn(pattern, new, text, count=count, flags=re.MULTILINE)
        if not found:
            raise BenchError(f"nginx.conf has no {pattern!r} to change; the variant needs updating")
        return changed

    return change


def both(*changes: Callable[[str], str]) -> Callable[[str], str]:
    def change(text: str) -> str:
        for each in changes:
            text = each(text)
        return text

    return change


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    keeps: bool  # every feature kept: a candidate to adopt
    change: Callable[[str], str] = lambda text: text


# The lines adopted from this experiment (issue 22) left out without TLS and limits: `as-before` puts
# them back (the limits with their default values) to measure what leaving them out saves.
HSTS_BACK = edit(
    r"^(\s*)(add_header Referrer-Policy no-referrer always;)$",
    r"\1\2\n\1add_header Strict-Transport-Security $hsts always;",
)
LIMIT_REQ_BACK = edit(
    r"^(\s*)(location (/api/|= /api) \{)$",
    r"\1\2\n\1    limit_req zone=per_client_rate burst=200 nodelay;",
)
LIMIT_CONN_BACK = edit(r"^(\s*)(proxy_send_timeout \d+s;)$", r"\1\2\n\n\1limit_conn per_client_conn 100;", 1)
REAL_IP = r"^\s*proxy_set_header X-Real-IP \$remote_addr;\n"
HIDDEN = "X-Content-Type-Options|X-Frame-Options|Referrer-Policy|Strict-Transport-Security"
HIDE_SECURITY = rf"^\s*proxy_hide_header ({HIDDEN});\n"
REQ_ID_MAP = r"^\s*map \$http_x_request_id \$req_id \{\n(?:.*\n)*?\s*\}\n"
SECURITY_HEADERS = r"^\s*add_header (X-Content-Type-Options|X-Frame-Options|Referrer-Policy) .*\n"
POOL_128 = edit(r"^(\s*)keepalive \d+;", r"\1keepalive 128;", count=1)
REQUESTS_100K = edit(r"^(\s*)keepalive_requests \d+;", r"\1keepalive_requests 100000;")

VARIANTS: tuple[Variant, ...] = (
    Variant(CURRENT, "deploy/nginx/nginx.conf.template as it is", True),
    Variant(
        "pool-128",
        "upstream `keepalive 128` (NGINX_UPSTREAM_KEEPALIVE, 32): more idle connections kept per worker",
        True,
        POOL_128,
    ),
    Variant(
        "requests-100k",
        "upstream `keepalive_requests 100000` (NGINX_UPSTREAM_KEEPALIVE_REQUESTS, 1000)",
        True,
        REQUESTS_100K,
    ),
    Variant(
        "buffering-off",
        "`proxy_buffering off` (the app's answer passed on as it comes, not into nginx's buffers)",
        False,  # slow readers then hold the app's workers: the shield nginx is there for
        edit(r"^(\s*)proxy_http_version 1\.1;", r"\1proxy_http_version 1.1;\n\1proxy_buffering off;"),
    ),
    Variant(
        "as-before",
        "the config before issue 22: the HSTS line without TLS and the limit lines with empty keys, rendered "
        "(the template now leaves them out unless TLS or the limit is on)",
        True,
        both(HSTS_BACK, LIMIT_REQ_BACK, LIMIT_CONN_BACK),
    ),
    Variant(
        "no-x-real-ip",
        "no `proxy_set_header X-Real-IP` (the app reads X-Forwarded-For, never X-Real-IP)",
        True,
        edit(REAL_IP, ""),
    ),
    Variant(
        "no-hide-header",
        "no proxy_hide_header for the security headers (the app sends none)",
        True,
        edit(HIDE_SECURITY, ""),
    ),
    Variant(
        "cpu-affinity",
        "`worker_cpu_affinity auto`",
        True,
        edit(r"^(worker_processes .*)$", r"\1\nworker_cpu_affinity auto;"),
    ),
    Variant(
        "open-file-cache",
        "`open_file_cache max=1000` (caches file lookups; nginx opens no file per proxied request)",
        True,
        edit(r"^(\s*)server_tokens off;", r"\g<0>\n\1open_file_cache max=1000 inactive=20s;"),
    ),
    Variant(
        "no-security-headers",
        "no X-Content-Type-Options, X-Frame-Options, Referrer-Policy: what the three add_header cost",
        False,
        edit(SECURITY_HEADERS, ""),
    ),
    Variant(
        "request-id-plain",
        "$request_id for every request, no map over the client's X-Request-ID: what the map costs",
        False,
        both(edit(REQ_ID_MAP, ""), edit(r"\$req_id\b", "$request_id")),
    ),
    Variant(
        "connection-plain",
        '`Connection ""` and no Upgrade header to the app instead of the $connection_upgrade map (no '
        "WebSockets): what the map and the header cost",
        False,
        both(
            edit(
                r"^(\s*)proxy_set_header Connection \$connection_upgrade;",
                r'\1proxy_set_header Connection "";',
            ),
            edit(r"^\s*proxy_set_header Upgrade \$upgrade;\n", ""),
        ),
    ),
    Variant(
        "access-log-off",
        "`access_log off`: what the JSON access line costs",
        False,
        edit(r"^(\s*)access_log \S+ blueprint_json .*;", r"\1access_log off;"),
    ),
    Variant(
        "all-kept",
        "pool-128, requests-100k, no-x-real-ip and no-hide-header together (none adopted: docs/SERVERS.md)",
        True,
        both(
            POOL_128,
            REQUESTS_100K,
            edit(REAL_IP, ""),
            edit(HIDE_SECURITY, ""),
        ),
    ),
)
NAMES = tuple(v.name for v in VARIANTS)


def variant_nginx(variant: Variant) -> Component:
    """The stack's nginx component, its rendered config changed by the variant."""

    def prepare(run: RunDir, config: Effective) -> None:
        NGINX.prepare(run, config)
        run.nginx_conf.write_text(variant.change(run.nginx_conf.read_text()))

    return replace(NGINX, prepare=prepare)


@contextlib.contextmanager
def nginx_in_front(variant: Variant, handle: stack.Handle, run_dir: Path) -> Iterator[tuple[RunDir, str]]:
    """The variant's nginx on free ports in front of `handle`'s app, for the block: its run dir, its URL."""
    bind = handle.settings.gunicorn_bind
    environ = {**handle.environ, **free_port_knobs("local"), "GUNICORN_BIND": bind}
    run = RunDir(run_dir)
    components = (variant_nginx(variant),)
    try:
        with stack.quietly(True):
            state = local.up(run, stack.configure(run_dir, environ, env_file=None), environ, components)
        yield run, state.url
    finally:
        local.down(run, quiet=True, components=components)


def roles(handle: stack.Handle, front: RunDir | None) -> Callable[[], dict[str, list[int]]]:
    """The processes on the path: the app (and its log pipe), and through a variant its nginx and log pipe."""

    def now() -> dict[str, list[int]]:
        app = handle.app_pid()
        state = RunDir(handle.run_dir).load_state()
        if app is None or state is None:
            return {}
        found = {"app": [app, *handle.worker_pids()]}
        pipes = [state.started[name].log_pid for name in state.started if name != NGINX.name]
        front_state = front.load_state() if front else None
        if front_state is not None:
            nginx = front_state.started[NGINX.name]
            found["nginx"] = [nginx.pid, *procs.descendants(nginx.pid)]
            pipes.append(nginx.log_pid)
        return {**found, "log pipes": pipes}

    return now


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def summarize(rounds: list[dict[str, dict[str, Any]]], variants: list[Variant]) -> list[dict[str, Any]]:
    """Per variant: the median over rounds of req/s and CPU µs per request (by role), the hop (its total
    minus the app alone measured beside it) and what it saved against the measurement of current beside
    it (positive: cheaper). Current's and direct's rows: every measurement of them."""
    total = "server_cpu_us_per_request"

    def keys(name: str, each: dict[str, dict[str, Any]]) -> list[str]:
        return [key for key in each if key.startswith(f"{name}@")] if name in (CURRENT, DIRECT) else [name]

    def values(name: str, pick: Callable[[dict[str, Any]], float]) -> list[float]:
        return [pick(each[key]) for each in rounds for key in keys(name, each)]

    def beside(key: str) -> str:
        return f"{DIRECT}@{key.split('@')[-1]}"

    def hops(name: str) -> list[float]:
        return [each[key][total] - each[beside(key)][total] for each in rounds for key in keys(name, each)]

    def role(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda v: float(v["server_cpu_us_by_role"].get(name, 0.0))

    direct = {
        "variant": DIRECT,
        "what": "the app alone, on its bind",
        "rps": median(values(DIRECT, lambda v: float(v["rps"]))),
        "total_us": median(values(DIRECT, lambda v: float(v[total]))),
        "app_us": median(values(DIRECT, role("app"))),
    }
    summary = [direct]
    for variant in variants:
        saved = (
            []
            if variant.name == CURRENT
            else [each[f"{CURRENT}@{variant.name}"][total] - each[variant.name][total] for each in rounds]
        )
        summary.append(
            {
                "variant": variant.name,
                "what": variant.what,
                "keeps_every_feature": variant.keeps,
                "rps": median(values(variant.name, lambda v: float(v["rps"]))),
                "total_us": median(values(variant.name, lambda v: float(v[total]))),
                "app_us": median(values(variant.name, role("app"))),
                "nginx_us": median(values(variant.name, role("nginx"))),
                "log_pipes_us": median(values(variant.name, role("log pipes"))),
                "hop_us": median(hops(variant.name)),
                "hop_us_rounds": [round(h, 1) for h in hops(variant.name)],
                "saved_us": median(saved) if saved else None,
                "saved_us_rounds": [round(s, 1) for s in saved],
            }
        )
    return summary


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# The nginx hop, variant by variant — {meta['started']}",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['usable_cpus']} usable CPUs; load average "
        f"(1/5/15 min) before {meta['load_average_before']}, after {meta['load_average_after']}; wrk on the "
        f"same machine. {meta['settings']}.",
        "",
        "| variant | keeps every feature | req/s | all µs/req | app µs | nginx µs | log pipes µs | hop µs "
        "| saved vs current µs (each round) | what |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if s["variant"] == DIRECT:
            lines.append(
                f"| direct | | {s['rps']:,.0f} | {s['total_us']} | {s['app_us']} | | | | | {s['what']} |"
            )
            continue
        rounds = ", ".join(map(str, s["saved_us_rounds"]))
        saved = "" if s["saved_us"] is None else f"{s['saved_us']} ({rounds})"
        lines.append(
            f"| {s['variant']} | {'yes' if s['keeps_every_feature'] else 'no'} | {s['rps']:,.0f} "
            f"| {s['total_us']} | {s['app_us']} | {s['nginx_us']} | {s['log_pipes_us']} | {s['hop_us']} "
            f"| {saved} | {s['what']} |"
        )
    lines += [
        "",
        "hop: every process on the path through that nginx (app, nginx, log pipes) minus the app alone "
        "measured beside it, per request; medians over the rounds (current's and direct's: over every "
        "measurement of them). saved: the current config beside it minus the variant, round by round "
        "(positive: the variant is cheaper).",
    ]
    return "\n".join(lines) + "\n"


def parser() -> EnvParser:
    p = EnvParser(
        prog="hop",
        description="nginx config variants in front of one app, each measured against the current config.",
        tool="bench",
        error=BenchError,
    )
    p.add_argument("--variants", default="", help=f"Variants (default: all): {', '.join(NAMES)}.")
    p.add_argument("--rounds", type=int, default=3, help="Rounds over every variant (default 3).")
    p.add_argument("--seconds", env="BENCH_SECONDS")
    p.add_argument("--connections", env="BENCH_CONNECTIONS")
    p.add_argument("--workers", default="2", help="WEB_CONCURRENCY of the app (default 2).")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def chosen(text: str) -> list[Variant]:
    names = [n.strip() for n in text.split(",") if n.strip()] or list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise BenchError(f"--variants: no such variant {unknown[0]!r}; choose from {', '.join(NAMES)}")
    if CURRENT not in names:
        names.insert(0, CURRENT)
    return [v for v in VARIANTS if v.name in names]


def run(args: argparse.Namespace) -> Path:
    variants = chosen(args.variants)
    if args.rounds < 1:
        raise BenchError(f"--rounds={args.rounds}: at least 1")
    wrk = find_wrk()
    started = datetime.now(UTC)
    report_dir: Path = args.out_root / f"hop-{started.strftime('%Y%m%d-%H%M%S')}"
    report_dir.mkdir(parents=True)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "settings": f"wrk -t1 -c{args.connections}, {args.seconds:g} s per measurement, {args.rounds} "
        f"rounds, WEB_CONCURRENCY={args.workers}, GET {PATH}",
        "variants": [v.name for v in variants],
    }
    base = {**stack.isolated_base(), "RUNTIME": "local"}
    knobs = {"WEB_CONCURRENCY": str(args.workers), **free_port_knobs("local")}
    knobs |= {"GUNICORN_MAX_REQUESTS": "0", "GUNICORN_MAX_REQUESTS_JITTER": "0"}  # no recycling mid-row
    rounds: list[dict[str, dict[str, Any]]] = []
    with contextlib.ExitStack() as fronts:
        handle = fronts.enter_context(stack.running("local", knobs, report_dir / "stack", base=base))
        fronts_by_name = {
            v.name: fronts.enter_context(nginx_in_front(v, handle, report_dir / v.name)) for v in variants
        }
        runs = {name: run for name, (run, _) in fronts_by_name.items()}
        urls = {name: url for name, (_, url) in fronts_by_name.items()}
        urls[DIRECT] = f"http://{handle.settings.gunicorn_bind}"

        def measure(number: int, name: str, key: str) -> dict[str, Any]:
            out = report_dir / "rounds" / f"{number}" / key
            path_roles, url = roles(handle, runs.get(name)), f"{urls[name]}{PATH}"
            run_wrk(wrk, url, 1.0, args.connections, TIMEOUT_S, out / "warm-up", path_roles)
            result = run_wrk(wrk, url, args.seconds, args.connections, TIMEOUT_S, out, path_roles)
            fields = result.fields()
            cpu = f"{fields['server_cpu_us_per_request']} µs/req {fields['server_cpu_us_by_role']}"
            print(f"round {number + 1}/{args.rounds} {key}: {result.rps:,.0f} req/s, {cpu}", file=sys.stderr)
            return fields

        for number in range(args.rounds):
            measured: dict[str, dict[str, Any]] = {}
            # Each variant right beside a measurement of current and of the app alone, in turns first and
            # last: its hop and what it saved are differences of neighbours, not of moments minutes apart.
            for variant in variants:
                if variant.name == CURRENT:
                    continue
                three = [
                    (DIRECT, f"{DIRECT}@{variant.name}"),
                    (CURRENT, f"{CURRENT}@{variant.name}"),
                    (variant.name, variant.name),
                ]
                for name, key in three if number % 2 == 0 else reversed(three):
                    measured[key] = measure(number, name, key)
            rounds.append(measured)
    experiment.write_report(report_dir, "hop", meta, summarize(rounds, variants), rounds, markdown)
    return report_dir


def main(argv: list[str] | None = None) -> int:
    return experiment.main("hop", parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
