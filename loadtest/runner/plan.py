"""What a run is made of, checked before anything starts: the scenario's locustfiles (and the shape's), the
run time, and the directory its report goes to."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from loadtest.errors import LoadtestError
from loadtest.stack import ROOT

SCENARIO_DIR = ROOT / "loadtest" / "scenarios"
SHAPE_DIR = ROOT / "loadtest" / "shapes"
REPORTS_DIR = ROOT / "reports"
# Every loadtest/scenarios/<name>_users.py is a scenario; mixed (all of them) is the default.
SCENARIOS = (
    "mixed",
    *sorted({p.stem.removesuffix("_users") for p in SCENARIO_DIR.glob("*_users.py")} - {"mixed"}),
)
SHAPES = ("step", "spike", "soak")
TIMESPAN = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s?)?$")


def parse_run_time(run_time: str) -> int:
    match = TIMESPAN.match(run_time.strip())
    if not run_time.strip() or not match:
        raise LoadtestError(f"RUN_TIME={run_time!r} is not a duration like 30s, 5m or 1h30m")
    return sum(int(match[unit] or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1)))


def locustfiles(scenario: str, shape: str | None = None) -> list[str]:
    """A scenario name, or the path of any locustfile; plus the shape's file."""
    if scenario in SCENARIOS:
        files = [SCENARIO_DIR / f"{scenario}_users.py"]
    elif scenario.endswith(".py") and Path(scenario).is_file():
        files = [Path(scenario).resolve()]
    else:
        raise LoadtestError(f"SCENARIO={scenario!r} is unknown; choose from {', '.join(SCENARIOS)}")
    if shape is not None:
        if shape not in SHAPES:
            raise LoadtestError(f"SHAPE={shape!r} is unknown; choose from {', '.join(SHAPES)} (or none)")
        files.append(SHAPE_DIR / f"{shape}_shape.py")
    return [str(f) for f in files]


def report_dir(name: str, out_dir: Path | None = None) -> Path:
    """`out_dir`, else reports/<time>-<name>; created."""
    directory = out_dir or REPORTS_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
