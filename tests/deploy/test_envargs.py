"""An option bound to its variable of service/settings.py: the command line wins, then the variable, then
the registry's default for the tool; every value is checked against the registry's row and a bad one is
named in one line; the help comes from the registry."""

from __future__ import annotations

from argparse import Namespace

import pytest

from deploy.stackctl.config import KNOBS
from deploy.stackctl.envargs import EnvParser
from service.settings import Settings, ToolInputs, env_name


def parser(environ: dict[str, str]) -> EnvParser:
    p = EnvParser(prog="t", tool="sweep", error=ValueError, environ=environ)
    p.add_argument("--users", env="USERS")
    p.add_argument("--scenario", env="SCENARIO")
    p.add_argument("--seconds", env="DRILL_SECONDS", default=None)
    p.add_argument("--short", action="store_true", env="DRILL_SHORT")
    p.add_argument("--workers", env="LOCUST_WORKERS")  # a stack knob's row binds the same way
    p.add_argument("--format", env="LAB_FORMAT")
    return p


ENV = {
    "USERS": "7",
    "SCENARIO": "slow",
    "DRILL_SECONDS": "2.5",
    "DRILL_SHORT": "1",
    "LOCUST_WORKERS": "2",
    "LAB_FORMAT": "json",
}


def test_the_command_line_wins_then_the_variable_then_the_tools_default() -> None:
    assert parser({}).parse_args([]) == Namespace(
        users=20, scenario="http", seconds=None, short=False, workers=0, format="table"
    ), "a sweep's SCENARIO defaults to http; default=None leaves the default to the caller"
    assert parser(ENV).parse_args([]) == Namespace(
        users=7, scenario="slow", seconds=2.5, short=True, workers=2, format="json"
    )
    given = parser(ENV).parse_args(["--users", "9", "--seconds", "3", "--format", "markdown"])
    assert (given.users, given.seconds, given.format, given.scenario) == (9, 3.0, "markdown", "slow")


def test_an_empty_variable_is_unset() -> None:
    """make exports `make drill DRILL_SHORT=` as an empty variable."""
    assert parser(dict.fromkeys(ENV, "")).parse_args([]) == parser({}).parse_args([])


def test_a_bad_variable_under_a_given_option_is_never_read() -> None:
    assert parser({"USERS": "abc"}).parse_args(["--users", "3"]).users == 3


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [
        ({"USERS": "abc"}, [], "USERS='abc': not a whole number"),
        ({"USERS": "2.5"}, [], "USERS='2.5': not a whole number"),
        ({}, ["--users", "0"], "USERS='0': must be at least 1"),
        ({"DRILL_SECONDS": "abc"}, [], "DRILL_SECONDS='abc': not a number"),
        ({"DRILL_SECONDS": "nan"}, [], "DRILL_SECONDS='nan': must be at least 2"),
        ({"LOCUST_WORKERS": "65"}, [], "LOCUST_WORKERS='65': must be at most 64"),
        ({"DRILL_SHORT": "yes"}, [], "DRILL_SHORT='yes': 1 (on) or 0 (off)"),
        ({"LAB_FORMAT": "xml"}, [], "LAB_FORMAT='xml': one of table, markdown, json"),
        ({}, ["--format", "xml"], "LAB_FORMAT='xml': one of table, markdown, json"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    environ: dict[str, str], argv: list[str], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        parser(environ).parse_args(argv)
    assert str(raised.value) == message


def test_the_help_is_the_registrys_row() -> None:
    text = " ".join(parser({}).format_help().split())
    assert "--users USERS Peak concurrent Locust users. [env USERS, default 20]" in text
    assert "[env SCENARIO, default http]" in text
    assert "flagged for Locust CPU above 90 %. [env LOCUST_WORKERS, default 0]" in text
    assert "--format {table,markdown,json}" in text


def test_only_a_variable_of_the_registry_can_be_bound() -> None:
    with pytest.raises(KeyError, match=r"NOPE is not a variable of service/settings\.py"):
        parser({}).add_argument("--nope", env="NOPE")


def test_tool_inputs_are_not_stack_knobs() -> None:
    """A stack never reads them: not in `make check`, stack.env or a sweep's axes."""
    assert not set(ToolInputs.model_fields) & set(Settings.model_fields)
    assert not {env_name(field) for field in ToolInputs.model_fields} & set(KNOBS)
