"""`make check`, the config doctor: the effective configuration of every layer, each layer's own
validator, and the ordering rules of deploy/stackctl/rules.py. `up` and `reload` apply the same rules."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deploy.stackctl import docker, local, monitoring, preflight, rules, runtimes, tls, tools
from deploy.stackctl.config import KNOBS, ROOT, Effective, dump
from deploy.stackctl.errors import StackError
from deploy.stackctl.facts import HostFacts
from deploy.stackctl.runtime import Name
from deploy.stackctl.validation import Validation
from service.settings import ConfigError, Settings

OVERRIDE = f"{rules.UNSAFE_OVERRIDE}=1"


def layer_of(settings: Settings, name: str) -> str:
    extra = type(settings).model_fields[KNOBS[name]].json_schema_extra
    return str(extra.get("layer", "")) if isinstance(extra, dict) else ""


def knob_table(config: Effective) -> Table:
    table = Table(title="Effective configuration", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("knob", "value", "source", "layer"):
        table.add_column(column, overflow="fold")
    for name in KNOBS:
        value = config.values[name]
        style = None if value.source == "default" else "bold"
        table.add_row(
            name, dump(config.settings, name), value.source, layer_of(config.settings, name), style=style
        )
    return table


def derived_lines(settings: Settings, runtime: str, host: HostFacts) -> list[str]:
    return [
        f"runtime {runtime}; profile {settings.profile}",
        f"gunicorn workers {settings.workers} (WEB_CONCURRENCY={settings.web_concurrency}, 0 = usable CPUs "
        f"{host.cpus}); nginx workers {rules.nginx_workers(settings, host)} "
        f"(NGINX_WORKER_PROCESSES={settings.nginx_worker_processes}); nginx -> {settings.upstream}",
        f"limits: {host.somaxconn.name} = {host.somaxconn.value}, {host.open_files.name} = "
        f"{host.open_files.value}",
    ]


def validate_nginx(config: Effective) -> Validation:
    command = "nginx -t"
    try:
        nginx = tools.find_nginx()
    except StackError as error:
        return Validation("nginx", command, "skipped", str(error))
    with tempfile.TemporaryDirectory(prefix="stack-check-") as scratch:
        run = local.RunDir(Path(scratch))
        pinned = config.settings.model_copy(update={"nginx_run_dir": str(run.nginx_dir)})
        if config.settings.nginx_tls:
            pinned = with_tls_files(config.settings, pinned)
        local.prepare(run, Effective(pinned, config.values))
        try:
            local.check_nginx(nginx, run)
        except StackError as error:
            return Validation("nginx", command, "failed", str(error))
    return Validation("nginx", command, "ok", "rendered nginx.conf.template")


def with_tls_files(settings: Settings, scratch: Settings) -> Settings:
    """Settings for `nginx -t` in a scratch directory: the real certificate and key, or, before `make up`
    generated them, a throwaway pair made there (the TLS findings judge the real ones)."""
    served = tls.files(settings)
    if served.generated and not served.cert.is_file():
        # When that fails, nginx -t names the missing file and the TLS findings say why.
        with contextlib.suppress(tls.TlsError, StackError):
            tls.generate(tls.files(scratch), tools.find_openssl())
        return scratch
    return scratch.model_copy(update={"nginx_tls_cert": str(served.cert), "nginx_tls_key": str(served.key)})


def tls_findings(settings: Settings) -> list[rules.Finding]:
    try:
        binary: str | None = tools.find_openssl() if settings.nginx_tls else None
    except StackError:
        binary = None
    return tls.findings(settings, binary)


def validate_gunicorn(config: Effective, where: preflight.Where | None) -> Validation:
    """gunicorn --check-config where the app runs (this host's app environment or the app image); without
    one (no engine to build the image), with the tooling virtualenv on this host."""
    command = "gunicorn --check-config"
    if where is None and config.settings.app_requirements:
        return Validation("gunicorn", command, "skipped", "it loads the app: only in the app image")
    with tempfile.TemporaryDirectory(prefix="stack-check-") as scratch:
        run = local.RunDir(Path(scratch))
        local.prepare(run, config)
        args = ["-m", "gunicorn", "-c", where.gunicorn_conf if where else str(local.GUNICORN_CONF)]
        if where is None or not where.in_image:
            # This host's python: the rendered stack.env, as the local runtime's gunicorn reads it.
            python, said = (where.prefix, where.description) if where else ([sys.executable], "this host")
            where = preflight.Where(said, python, local.process_env(run), str(local.GUNICORN_CONF))
        result = where.run([*args, "--check-config"], timeout=120)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
        return Validation("gunicorn", command, "failed", lines[-1])
    try:  # --check-config loads the app but not the worker class
        from gunicorn.util import load_class

        load_class(config.settings.gunicorn_worker_class, section="gunicorn.workers")
    except (RuntimeError, ImportError) as error:
        reason = str(error).splitlines()[0].rstrip(": ")
        detail = f"GUNICORN_WORKER_CLASS={config.settings.gunicorn_worker_class}: {reason}"
        return Validation("gunicorn", command, "failed", detail)
    detail = f"deploy/gunicorn.conf.py with the rendered env in {where.description}"
    return Validation("gunicorn", command, "ok", detail)


def validate_prometheus(config: Effective) -> Validation:
    """MONITORING=1: the config the local runtime would run, and the rules it names, by promtool."""
    command = "promtool check config"
    try:
        promtool = tools.find_promtool()
    except StackError as error:
        return Validation("prometheus", command, "skipped", str(error))
    with tempfile.TemporaryDirectory(prefix="stack-check-") as scratch:
        path = Path(scratch) / "prometheus.yml"
        path.write_text(monitoring.render(config.settings, monitoring.local_scrape(config.settings)))
        try:
            monitoring.check_config(promtool, path)
        except StackError as error:
            return Validation("prometheus", command, "failed", str(error))
    return Validation("prometheus", command, "ok", "rendered prometheus.yml.template and rules.yml")


def validate_compose(config: Effective) -> Validation:
    if not docker.COMPOSE_FILE.is_file():
        return Validation("compose", "compose config", "skipped", f"no {docker.COMPOSE_FILE.name} in {ROOT}")
    try:
        command = docker.compose_command()
    except StackError as error:
        return Validation("compose", "compose config", "skipped", str(error))
    env = {**os.environ, **{name: dump(config.settings, name) for name in KNOBS}}
    result = subprocess.run(
        [*command, "-f", str(docker.COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    name = " ".join(command) + " config -q"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        return Validation("compose", name, "failed", lines[-1])
    return Validation("compose", name, "ok", docker.COMPOSE_FILE.name)


MARKS: dict[rules.Severity, str] = {
    "ok": "[green]✓ ok[/]",
    "error": "[red]✗ error[/]",
    "warning": "[yellow]! warning[/]",
}


def print_findings(findings: list[rules.Finding], console: Console) -> None:
    for finding in findings:
        console.print(f"{MARKS[finding.severity]} {finding.rule}: {finding.claim}", highlight=False)
        if finding.severity == "ok":
            continue
        console.print(f"    why: {finding.why}", highlight=False)
        console.print(f"    fix: {finding.fix}", highlight=False)


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 130, soft_wrap=True)


def check_app(
    config: Effective, runtime: str, run_dir: Path, environ: Mapping[str, str]
) -> tuple[Validation, preflight.Where | None]:
    """The pre-flight where `runtime` runs the app (preflight.py); StackError in one line when the app would
    not run. Skipped, with the reason, when there is no engine to build the app image in."""
    backend = runtimes.RUNTIMES[runtimes.resolve(runtime)]
    command = "python -m service.platform.loader --lifespan"
    try:
        where = backend.app_where(run_dir, config, environ)
    except docker.Unavailable as error:
        return Validation("app", command, "skipped", str(error)), None
    said = preflight.check_app(where, config, run_dir / preflight.LOG)
    return Validation("app", command, "ok", f"{said} (in {where.description})"), where


def run_check(
    config: Effective, runtime: str, run_dir: Path, environ: Mapping[str, str] | None = None
) -> int:
    console = make_console()
    settings = config.settings
    backend = runtimes.RUNTIMES[runtimes.resolve(runtime)]
    host = backend.host_facts(settings)
    app, where = check_app(config, runtime, run_dir, os.environ if environ is None else environ)
    console.print(knob_table(config))
    console.print("bold rows come from a profile, .env, the environment or the runtime", style="dim")
    for line in derived_lines(settings, runtime, host):
        console.print(line, highlight=False)

    console.print("\n[bold]Validators[/]")
    validations = [app, validate_nginx(config), validate_gunicorn(config, where), validate_compose(config)]
    if settings.monitoring:
        validations.append(validate_prometheus(config))
    validations += backend.validations(config)
    for check in validations:
        colour = {"ok": "green", "failed": "red", "skipped": "yellow"}[check.status]
        console.print(f"[{colour}]{check.status:>7}[/] {check.command}: {check.detail}", highlight=False)

    edge = tls_findings(settings)
    if edge:
        console.print(f"\n[bold]TLS[/] (NGINX_TLS={settings.nginx_tls})")
        print_findings(edge, console)
    findings = rules.evaluate(settings, host)
    console.print(f"\n[bold]Ordering rules[/] ({len(rules.RULES)} rules, failure-modes.md)")
    print_findings(findings, console)
    broken = rules.errors(findings)
    failed = [c for c in validations if c.status == "failed"]
    unusable = rules.errors(edge)
    warnings = len(rules.problems(findings)) - len(broken) + len(rules.problems(edge)) - len(unusable)
    if broken or failed or unusable:
        parts = [f"{len(broken)} rule violation(s)"] * bool(broken)
        parts += [f"{', '.join(c.command for c in failed)} failed"] * bool(failed)
        parts += [f"{len(unusable)} TLS input(s) unusable"] * bool(unusable)
        refusal = f" — `make up` refuses this config ({OVERRIDE} overrides)" if broken else ""
        console.print(f"[red]check failed: {'; '.join(parts)}[/]{refusal}", highlight=False)
        return 1
    console.print(
        f"[green]check ok:[/] all {len(rules.RULE_TITLES)} rules hold, {warnings} warning(s); validators: "
        + ", ".join(f"{c.command} {c.status}" for c in validations),
        highlight=False,
    )
    return 0


def refuse_unsafe(config: Effective, runtime: Name, command: str, allowed: bool | None = None) -> None:
    """What `up` and `reload` run first: refuse a config that breaks a rule unless ALLOW_UNSAFE_CONFIG=1
    (`allowed`; default: read from this process's environment)."""
    findings = rules.evaluate(config.settings, runtimes.RUNTIMES[runtime].host_facts(config.settings))
    broken = rules.errors(findings)
    console = make_console(stderr=True)
    print_findings(rules.problems(findings), console)
    if not broken:
        return
    names = "; ".join(f.claim for f in broken)
    if rules.unsafe_config_allowed(os.environ) if allowed is None else allowed:
        console.print(
            f"[bold red]WARNING: {OVERRIDE}: {command} goes ahead with {len(broken)} broken ordering "
            f"rule(s) ({names}). Expect the failures they describe; never use this in production.[/]",
            highlight=False,
        )
        return
    raise ConfigError(
        f"refused: {len(broken)} ordering rule(s) broken ({names}); fix them (see `make check`) or set "
        f"{OVERRIDE} for an experiment"
    )
