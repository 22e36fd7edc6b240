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


def nginx_variables(settings: Settings) -> dict[str, str]:
    variables = {name: dump(settings, name) for name in KNOBS if name.startswith("NGINX_")}
    variables["NGINX_LISTEN_PORT"] = str(settings.listen_port)
    variables["NGINX_UPSTREAM"] = settings.upstream
    return variables


def render_nginx(settings: Settings, template: Path = NGINX_TEMPLATE) -> str:
    variables = nginx_variables(settings)
    text = template.read_text()
    unknown = sorted(set(NGINX_VARIABLE.findall(text)) - variables.keys())
    if unknown:
        raise ConfigError(f"{template.name} uses {', '.join(unknown)}, which no knob defines")
    return NGINX_VARIABLE.sub(lambda m: variables[m.group(1)], text)


def nginx_temp_dirs(rendered: str) -> list[Path]:
    """The writable directories a rendered nginx.conf names (its *_temp_path lines), in order."""
    return [Path(found) for found in NGINX_TEMP_PATH.findall(rendered)]
