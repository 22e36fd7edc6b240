"""The effective configuration: every knob's value and where it came from.

Sources, weakest first: the default in service/settings.py, deploy/profiles/<PROFILE>.env, `.env` in the
repository root, the process environment. A runtime may pin a few values it owns (paths, ports).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings.sources import DotEnvSettingsSource

from deploy.stackctl import tls
from deploy.stackctl.tools import installed_nginx, nginx_version
from service import websocket_paths
from service.settings import ConfigError, Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = ROOT / "deploy" / "profiles"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
KNOBS = {env_name(field): field for field in Settings.model_fields}


@dataclass(frozen=True)
class Value:
    value: str
    source: str


@dataclass(frozen=True)
class Effective:
    settings: Settings
    values: dict[str, Value]

    def env_file_text(self) -> str:
        lines = [f"# effective stack settings — rendered by stackctl; sources: {self.sources_summary()}"]
        lines += [f"{name}={dump(self.settings, name)}" for name in KNOBS]
        return "\n".join(lines) + "\n"

    def sources_summary(self) -> str:
        return ", ".join(sorted({v.source for v in self.values.values()}))


def dump(settings: Settings, name: str) -> str:
    return str(getattr(settings, KNOBS[name]))


def read_env_file(path: Path) -> dict[str, str]:
    parsed = DotEnvSettingsSource(Settings, env_file=path)._read_env_files()
    return {key.upper(): value for key, value in parsed.items() if value is not None}


def knob_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name in KNOBS}


def knob_environment(config: Effective, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with every knob's effective value, for compose."""
    return {**(os.environ if base is None else base), **{name: v.value for name, v in config.values.items()}}


KEPT = "kept from start"


def effective(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = ROOT / ".env",
    pinned: Mapping[str, str] | None = None,
    kept: Mapping[str, str] | None = None,
) -> Effective:
    """`kept`: values a running stack was started with from its environment; a reload keeps them unless
    the environment now says otherwise."""
    environ = dict(os.environ if environ is None else environ)
    dotenv = read_env_file(env_file) if env_file and env_file.is_file() else {}
    profile = environ.get("PROFILE") or dotenv.get("PROFILE") or "default"
    profile_path = PROFILES_DIR / f"{profile}.env"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", profile) or not profile_path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.env"))) or "none"
        raise ConfigError(f"PROFILE={profile!r}: no file deploy/profiles/{profile}.env (known: {known})")

    values: dict[str, Value] = {}
    for layer, source in (
        (read_env_file(profile_path), f"profile:{profile}"),
        (knob_env(dotenv), ".env"),
        (dict(kept or {}), KEPT),
        (knob_env(environ), "environment"),
        (pinned or {}, "runtime"),
    ):
        for name, value in knob_env(layer).items():
            values[name] = Value(value, source)
    settings = load_settings(**{KNOBS[name]: v.value for name, v in values.items()})
    for name in KNOBS:
        values.setdefault(name, Value(dump(settings, name), "default"))
    return Effective(settings, values)


NGINX_VARIABLE = re.compile(r"\$\{(NGINX_[A-Z0-9_]+)\}")
NGINX_TEMP_PATH = re.compile(r"^\s*[a-z_]+_temp_path\s+([^;\s]+)", re.MULTILINE)


# A template line `#[name] directive` is rendered as `directive` when the condition holds, else dropped
# (deploy/nginx/entrypoint.sh does the same in containers, where it may also turn `resolve` on).
CONDITIONAL_LINE = re.compile(r"^([ \t]*)#\[([a-z0-9_]+)\] ")
CONDITIONS = (
    *("tls", "tls_http2_listen", "tls_http2_on", "demo_routes_off"),
    *("limit_req", "limit_conn", "resolve", "ocsp"),
)
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)  # `http2 on;`; older nginx has only `listen ... http2`, deprecated since


def http2_directive() -> bool:
    """Whether this host's nginx wants `http2 on;` (without nginx: no, the older form works everywhere)."""
    nginx = installed_nginx()
    return bool(nginx) and nginx_version(str(nginx)) >= HTTP2_DIRECTIVE_SINCE


def nginx_conditions(settings: Settings) -> set[str]:
    on = set()
    if settings.nginx_tls:
        on |= {"tls", "tls_http2_on" if http2_directive() else "tls_http2_listen"}
        if settings.nginx_ocsp_stapling:
            on.add("ocsp")
    if not settings.app_demo_routes:
        on.add("demo_routes_off")
    if settings.nginx_limit_req_enabled:
        on.add("limit_req")
    if settings.nginx_limit_conn_enabled:
        on.add("limit_conn")
    return on


def nginx_variables(settings: Settings) -> dict[str, str]:
    variables = {name: dump(settings, name) for name in KNOBS if name.startswith("NGINX_")}
    variables["NGINX_LISTEN_PORT"] = str(settings.listen_port)
    variables["NGINX_UPSTREAM"] = settings.upstream
    variables["NGINX_HTTPS_LISTEN_PORT"] = str(settings.https_listen_port)
    variables["NGINX_HTTPS_PORT"] = str(settings.https_port)  # the port a redirect names: HTTPS_PORT
    variables["NGINX_APP_METRICS_PATH"] = settings.app_metrics_path  # what the status port's /metrics asks
    served = tls.files(settings)
    variables["NGINX_TLS_CERT"], variables["NGINX_TLS_KEY"] = str(served.cert), str(served.key)
    return variables


# The template's one repeated block: rendered once per WebSocket location (service/websocket_paths.py),
# PLACEHOLDER its argument (deploy/nginx/entrypoint.sh does the same in containers).
EACH_WEBSOCKET_LOCATION = re.compile(
    r"^[ \t]*#\[each websocket_location\][ \t]*\n(.*?)^[ \t]*#\[end each\][ \t]*\n", re.MULTILINE | re.DOTALL
)
PLACEHOLDER = "{{websocket_location}}"


def expand_websocket_locations(text: str, paths: str) -> str:
    each = websocket_paths.locations(paths)
    expanded, blocks = EACH_WEBSOCKET_LOCATION.subn(
        lambda found: "".join(found.group(1).replace(PLACEHOLDER, location) for location in each), text
    )
    if blocks != 1 or PLACEHOLDER in expanded:
        raise ConfigError(f"nginx template: expected one #[each websocket_location] block, found {blocks}")
    return expanded


def render_nginx(settings: Settings, template: Path = NGINX_TEMPLATE) -> str:
    variables = nginx_variables(settings)
    text = expand_websocket_locations(template.read_text(), settings.nginx_websocket_paths)
    unknown = sorted(set(NGINX_VARIABLE.findall(text)) - variables.keys())
    if unknown:
        raise ConfigError(f"{template.name} uses {', '.join(unknown)}, which no knob defines")
    rendered = NGINX_VARIABLE.sub(lambda m: variables[m.group(1)], text)
    return apply_conditions(rendered, nginx_conditions(settings))


def apply_conditions(text: str, on: set[str]) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        found = CONDITIONAL_LINE.match(line)
        if found is None:
            lines.append(line)
        elif found.group(2) not in CONDITIONS:
            raise ConfigError(f"nginx template: unknown condition #[{found.group(2)}] (known: {CONDITIONS})")
        elif found.group(2) in on:
            lines.append(found.group(1) + line[found.end() :])
    return "".join(lines)


def nginx_temp_dirs(rendered: str) -> list[Path]:
    """The writable directories a rendered nginx.conf names (its *_temp_path lines), in order."""
    return [Path(found) for found in NGINX_TEMP_PATH.findall(rendered)]
