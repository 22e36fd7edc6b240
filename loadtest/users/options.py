"""Per-run options: knobs of service/settings.py, settable on the command line and in the web UI; each
option's name, env var, default and help come from the knob. Plus the runner's own: the CPU limit, the
summary file, and the stack's series and settings files for the web UI's Stack tab."""

from __future__ import annotations

from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from loadtest.limits import CPU_LIMIT
from loadtest.users.hooks import listener
from service.settings import ConfigError, load_settings

try:
    KNOBS = load_settings()
except ConfigError as error:
    raise SystemExit(f"loadtest: {error}") from None

KNOB_OPTIONS = (
    "locust_max_fail_ratio",
    "locust_max_p95",
    "locust_ws_hold",
    "locust_slow_delay",
    "locust_blocking_delay",
)


@listener(events.init_command_line_parser)
def add_options(parser: LocustArgumentParser) -> None:
    for field in KNOB_OPTIONS:
        parser.add_argument(
            "--" + field.removeprefix("locust_").replace("_", "-"),
            type=float,
            env_var=field.upper(),
            default=getattr(KNOBS, field),
            help=type(KNOBS).model_fields[field].description,
        )
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=CPU_LIMIT,
        include_in_web_ui=False,
        help="flag the run invalid when a Locust process's CPU goes above this percentage (Locust's is 90)",
    )
    parser.add_argument(
        "--stack-series",
        default="",
        include_in_web_ui=False,
        help="the stack's series (stack-series.jsonl) the runner's sampler writes: the web UI's Stack tab",
    )
    parser.add_argument(
        "--stack-settings",
        default="",
        include_in_web_ui=False,
        help="the knobs the stack runs with (stack-settings.json), shown in the Stack tab",
    )
    parser.add_argument(
        "--summary-file",
        default="",
        include_in_web_ui=False,
        help="write the run's summary (stats, thresholds, Locust CPU) as JSON here",
    )


def option(environment: Environment, name: str, default: Any) -> Any:
    options = environment.parsed_options
    return getattr(options, name, default) if options is not None else default
