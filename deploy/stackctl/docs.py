"""docs/SETTINGS.md is rendered from service/settings.py, so the table cannot drift from the code."""

from __future__ import annotations

from deploy.stackctl.config import ROOT
from service.settings import Settings, env_name

SETTINGS_DOC = ROOT / "docs" / "SETTINGS.md"

HEADER = """# Settings

Every knob of the stack, one row each. Generated from `service/settings.py` by
`make settings-table`; `make test` fails if this file and the code disagree.

Values come from (strongest first) the environment, `.env`, `deploy/profiles/$PROFILE.env`, then the
default below. `make check` prints the effective value of each knob and where it came from.

| Env name | Default | Unit | Layer | What changing it does |
|---|---|---|---|---|
"""


def render() -> str:
    rows = []
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        default = info.default
        shown = "(empty)" if default == "" else f"`{default}`"
        effect = (info.description or "").replace("|", "\\|")
        rows.append(
            f"| `{env_name(field)}` | {shown} | {extra.get('unit')} | {extra.get('layer')} | {effect} |"
        )
    return HEADER + "\n".join(rows) + "\n"


def settings_table(write: bool) -> int:
    if write:
        SETTINGS_DOC.parent.mkdir(exist_ok=True)
        SETTINGS_DOC.write_text(render())
        print(f"wrote {SETTINGS_DOC.relative_to(ROOT)}")
    else:
        print(render(), end="")
    return 0
