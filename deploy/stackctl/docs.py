"""docs/SETTINGS.md is rendered from service/settings.py, so the table cannot drift from the code."""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo

from deploy.stackctl.config import ROOT
from service.settings import Settings, ToolInputs, env_name

SETTINGS_DOC = ROOT / "docs" / "SETTINGS.md"

HEADER = """# Settings

Every knob of the stack, one row each. Generated from `service/settings.py` by
`make settings-table`; `make test` fails if this file and the code disagree.

Values come from (strongest first) the environment, `.env`, `deploy/profiles/$PROFILE.env`, then the
default below. `make check` prints the effective value of each knob and where it came from.

| Env name | Default | Unit | Layer | What changing it does |
|---|---|---|---|---|
"""

TOOLS_HEADER = """
## Inputs of the load tools

What `make loadtest` / `loadtest-ui`, `drill`, `bench`, `sweep` and `timeout-lab` run, not how the stack
is configured: no stack reads these. Give them as make variables (`make drill DRILL_SECONDS=30`) or in the
environment; each tool's command line reads its own (`python -m loadtest.drill --help` shows them beside
its options), and an option given on that command line wins.

| Env name | Default | Unit | Read by | What changing it does |
|---|---|---|---|---|
"""


def extra_of(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def shown(default: Any) -> str:
    return "(empty)" if default == "" else f"`{default}`"


def row(field: str, info: FieldInfo, default: str, column: str) -> str:
    effect = (info.description or "").replace("|", "\\|")
    return f"| `{env_name(field)}` | {default} | {extra_of(info).get('unit')} | {column} | {effect} |"


def tool_row(field: str, info: FieldInfo) -> str:
    """`defaults`: the tool that owns the row first, then the others that read it, with their defaults."""
    defaults: dict[str, Any] = extra_of(info).get("defaults") or {}
    default = shown(info.default)
    default += "".join(
        f"; {tool}: {shown(value)}" for tool, value in defaults.items() if value != info.default
    )
    return row(field, info, default, ", ".join(f"make {tool}" for tool in defaults))


def render() -> str:
    knobs = [
        row(field, info, shown(info.default), str(extra_of(info).get("layer")))
        for field, info in Settings.model_fields.items()
    ]
    tools = [tool_row(field, info) for field, info in ToolInputs.model_fields.items()]
    return HEADER + "\n".join(knobs) + "\n" + TOOLS_HEADER + "\n".join(tools) + "\n"


def settings_table(write: bool) -> int:
    if write:
        SETTINGS_DOC.parent.mkdir(exist_ok=True)
        SETTINGS_DOC.write_text(render())
        print(f"wrote {SETTINGS_DOC.relative_to(ROOT)}")
    else:
        print(render(), end="")
    return 0
