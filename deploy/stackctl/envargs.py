"""Command-line options bound to variables of service/settings.py, as Locust binds its options to LOCUST_*
(`env_var=`): an option given on the command line wins, then its variable (make puts the variables of its
own command line into the recipe's environment, so `make drill DRILL_SECONDS=5` reaches `--seconds`), then
the registry's default for that tool. The help shows the variable, its effect and its default, all from
the registry. A bad value is refused as NAME='value': rule, whether the option or the variable gave it."""

from __future__ import annotations

import argparse
import math
import operator
import os
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic.fields import FieldInfo

from service.settings import Settings, Tool, ToolInputs, tool_default

ON_OFF = {"1": True, "0": False}
# The bounds pydantic keeps in a field's metadata (annotated_types.Ge, ...): attribute, test, wording.
BOUNDS = (
    ("ge", operator.ge, "at least"),
    ("gt", operator.gt, "above"),
    ("le", operator.le, "at most"),
    ("lt", operator.lt, "below"),
)


def registry_field(env: str) -> tuple[FieldInfo, type[ToolInputs] | type[Settings]]:
    name = env.lower()
    for model in (ToolInputs, Settings):
        if name in model.model_fields:
            return model.model_fields[name], model
    raise KeyError(f"{env} is not a variable of service/settings.py")


def literal_choices(info: FieldInfo) -> tuple[str, ...]:
    kind = info.annotation
    return tuple(map(str, typing.get_args(kind))) if typing.get_origin(kind) is typing.Literal else ()


def shown(default: Any) -> str:
    if default in ("", None):
        return ""
    return f", default {default:g}" if isinstance(default, float) else f", default {default}"


def out_of_bounds(value: float, info: FieldInfo) -> str:
    """What `value` breaks of the field's bounds ('' if nothing); NaN breaks every bound."""
    for bound in info.metadata:
        for name, holds, words in BOUNDS:
            limit = getattr(bound, name, None)
            if limit is not None and not holds(value, limit):
                return f"must be {words} {limit:g}"
    return "" if math.isfinite(value) else "not a finite number"


def converter(env: str, info: FieldInfo) -> Callable[[str], Any]:
    """The field's text -> its value, checked against its type and bounds."""
    kind, choices = info.annotation, literal_choices(info)

    def convert(text: str) -> Any:
        if choices:
            if text not in choices:
                raise argparse.ArgumentTypeError(f"{env}={text!r}: one of {', '.join(choices)}")
            return text
        if kind not in (int, float):
            return text
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{env}={text!r}: not {'a whole' if kind is int else 'a'} number"
            ) from None
        if problem := out_of_bounds(value, info):
            raise argparse.ArgumentTypeError(f"{env}={text!r}: {problem}")
        return value

    return convert


def checked(env: str) -> Callable[[str], Any]:
    """An argparse `type` checking a value against NAME's row, for an option not bound to NAME."""
    return converter(env, registry_field(env)[0])


def on_off(env: str) -> Callable[[str], bool]:
    def convert(text: str) -> bool:
        if text not in ON_OFF:
            raise argparse.ArgumentTypeError(f"{env}={text!r}: 1 (on) or 0 (off)")
        return ON_OFF[text]

    return convert


class EnvParser(argparse.ArgumentParser):
    """`add_argument(..., env="NAME")` binds an option to NAME. `tool` picks the registry's default where
    tools differ (SCENARIO: http for a sweep); `default=` still overrides it (None: the caller decides);
    `help=` is added to the registry's effect. `error`: raised with the one-line message instead of
    argparse's usage-and-exit. `environ`: where the variables are read (default: this process's)."""

    def __init__(
        self,
        *args: Any,
        tool: Tool,
        error: type[Exception] | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tool: Tool = tool
        self.error_type = error
        self.environ = os.environ if environ is None else environ

    def add_argument(
        self, *flags: Any, env: str | None = None, empty_is_value: bool = False, **kwargs: Any
    ) -> argparse.Action:
        """`empty_is_value`: NAME= given empty is a value (DRILL_WS= : no WebSockets), not the default."""
        if env is None:
            return super().add_argument(*flags, **kwargs)
        info, model = registry_field(env)
        default = tool_default(env.lower(), self.tool) if model is ToolInputs else info.default
        given = self.environ.get(env)
        if not empty_is_value:
            given = given or None  # make exports an empty variable as ""
        text = " ".join(filter(None, [info.description, kwargs.pop("help", None)]))
        kwargs["help"] = f"{text} [env {env}{shown(default)}]".replace("%", "%%")
        flag = kwargs.get("action") == "store_true"
        if flag:
            default = bool(default)
        kwargs["default"] = given if given is not None else kwargs.get("default", default)
        if not flag:
            kwargs["type"] = converter(env, info)
            if choices := literal_choices(info):
                kwargs.setdefault("metavar", "{" + ",".join(choices) + "}")
        action = super().add_argument(*flags, **kwargs)
        if flag:
            # argparse passes a string default through the action's type when the option is not given.
            action.type = on_off(env)
        return action

    def error(self, message: str) -> NoReturn:
        # "argument --seconds: DRILL_SECONDS='x': ..." -> the variable's message alone: it names both.
        message = re.sub(r"^argument [^:]+: (?=[A-Z][A-Z0-9_]*=)", "", message)
        if self.error_type is not None:
            raise self.error_type(message)
        super().error(message)
