"""Issue 16: no code outside deploy/stackctl/runtimes.py branches on a runtime's name. What differs between
runtimes is a method or a capability of runtime.Runtime, asked of the implementation the map gives.

Read from the source (ast), over every Python file of the project. A *branch on a name* is any of:
- a comparison (==, !=, is, is not) with a runtime's name, as a string literal or a constant bound to one;
- `in` / `not in` against a literal tuple, list or set holding a runtime's name, or with a name on the left;
- a `match` case on a runtime's name;
- a dict display keyed by a runtime's name (a second map from names to behaviour);
- `.startswith()` / `.endswith()` with a runtime's name;
- isinstance / issubclass / `type(x) is` with a runtime's class (Local, Docker, Swarm).
A name used as data is none of these: passed as an argument (`stack.start("local", ...)`), stored in a
report row, set as the RUNTIME knob's value, used as a test id. The runtime names and classes come from
runtimes.RUNTIMES, so a runtime added there is covered without touching this file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from deploy.stackctl import runtimes
from deploy.stackctl.config import ROOT

NAMES = frozenset(runtimes.RUNTIMES)
CLASSES = frozenset(type(runtime).__name__ for runtime in runtimes.RUNTIMES.values())
SOURCES = ("service", "deploy", "loadtest", "tests", "examples")
# The one map from name to implementation, and the only place a name may be compared (resolve).
THE_MAP = "deploy/stackctl/runtimes.py"
# (file, the offending expression as ast.unparse prints it) -> why it is not a branch on a runtime.
# Empty today: every name left outside the map is data. An entry needs a reason a reviewer accepts, and
# an entry that matches nothing fails test_every_allowed_exception_still_exists.
ALLOWED: dict[tuple[str, str], str] = {}


def python_files() -> Iterator[Path]:
    for top in SOURCES:
        yield from sorted((ROOT / top).rglob("*.py"))


def is_name(node: ast.AST | None, aliases: frozenset[str]) -> bool:
    """A runtime's name as a literal, or a constant (NAME or module.NAME) bound to one somewhere."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in NAMES
    if isinstance(node, ast.Name):
        return node.id in aliases
    return isinstance(node, ast.Attribute) and node.attr in aliases


def holds_name(node: ast.AST, aliases: frozenset[str]) -> bool:
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(is_name(e, aliases) for e in node.elts)


def is_class(node: ast.AST) -> bool:
    """A runtime's class, alone or in a tuple or union (isinstance(x, (Docker, Swarm)), Docker | Swarm)."""
    if isinstance(node, ast.Name):
        return node.id in CLASSES
    if isinstance(node, ast.Attribute):
        return node.attr in CLASSES
    if isinstance(node, ast.Tuple):
        return any(is_class(e) for e in node.elts)
    return isinstance(node, ast.BinOp) and (is_class(node.left) or is_class(node.right))


def aliases_of(trees: list[ast.Module]) -> frozenset[str]:
    """Every identifier any module binds to a runtime's name: `DOCKER = "docker"` compares as "docker"."""
    bound = set()
    for tree in trees:
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            value = getattr(node, "value", None)
            if targets and is_name(value, frozenset()):
                bound |= {t.id for t in targets if isinstance(t, ast.Name)}
    return frozenset(bound)


def compares_a_name(node: ast.Compare, aliases: frozenset[str]) -> bool:
    sides = [node.left, *node.comparators]
    for op, left, right in zip(node.ops, sides[:-1], sides[1:], strict=True):
        if isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot):
            if any(is_name(side, aliases) or is_class(side) for side in (left, right)):
                return True
        elif isinstance(op, ast.In | ast.NotIn) and (holds_name(right, aliases) or is_name(left, aliases)):
            return True
    return False


def calls_on_a_name(node: ast.Call, aliases: frozenset[str]) -> bool:
    function = node.func
    if isinstance(function, ast.Attribute) and function.attr in ("startswith", "endswith"):
        return any(is_name(arg, aliases) or holds_name(arg, aliases) for arg in node.args)
    checks_type = isinstance(function, ast.Name) and function.id in ("isinstance", "issubclass")
    return checks_type and len(node.args) == 2 and is_class(node.args[1])


def is_branch(node: ast.AST, aliases: frozenset[str]) -> bool:
    if isinstance(node, ast.Compare):
        return compares_a_name(node, aliases)
    if isinstance(node, ast.MatchValue):
        return is_name(node.value, aliases)
    if isinstance(node, ast.Dict):
        return any(key is not None and is_name(key, aliases) for key in node.keys)
    return isinstance(node, ast.Call) and calls_on_a_name(node, aliases)


def branches(tree: ast.Module, aliases: frozenset[str]) -> Iterator[ast.AST]:
    return (node for node in ast.walk(tree) if is_branch(node, aliases))


def found() -> dict[tuple[str, str], int]:
    """Every branch on a runtime's name outside the map: (file, expression) -> line."""
    parsed = {path: ast.parse(path.read_text(), str(path)) for path in python_files()}
    aliases = aliases_of(list(parsed.values()))
    hits: dict[tuple[str, str], int] = {}
    for path, tree in parsed.items():
        relative = path.relative_to(ROOT).as_posix()
        if relative == THE_MAP:
            continue
        for node in branches(tree, aliases):
            hits.setdefault((relative, ast.unparse(node)), getattr(node, "lineno", 0))
    return hits


def test_no_code_outside_the_map_branches_on_a_runtime_name() -> None:
    unexplained = [
        f"{path}:{line}: {code}" for (path, code), line in found().items() if (path, code) not in ALLOWED
    ]
    assert unexplained == [], (
        "branch on a runtime's name outside deploy/stackctl/runtimes.py; ask a method or capability of "
        "runtime.Runtime (stack.backend(name), handle.backend) instead:\n" + "\n".join(unexplained)
    )


def test_every_allowed_exception_still_exists() -> None:
    assert set(ALLOWED) <= set(found()), "remove the allow-list entries that match nothing"


def test_the_rule_catches_what_it_says() -> None:
    """The detector itself: each form above is caught, and the data uses in the docstring are not."""
    caught = """
DOCKER = "docker"
if runtime == "swarm": pass
if "local" != name: pass
if name in ("docker", "swarm"): pass
if "docker" in used: pass
if runtime == DOCKER: pass
if runtime is settings.DOCKER: pass
match runtime:
    case "local": pass
GATHER = {"docker": facts_of_docker}
if name.startswith("dock" + "er") or name.startswith("swarm"): pass
if isinstance(handle.backend, docker.Docker): pass
if type(backend) is Local: pass
"""
    data = """
stack.start("local", knobs, run_dir)
row = Row("reload", "local", "HUP")
environ = {"RUNTIME": "docker", "PROFILE": "default"}
ids = ["local", "swarm", "no engine"]
peaks = {"master" if remote else "local": peak}
assert compose_command() == ["docker", "compose"]
if name == "dockerd": pass
"""
    aliases = aliases_of([ast.parse(caught)])
    assert aliases == {"DOCKER"}
    kinds = sorted(type(node).__name__ for node in branches(ast.parse(caught), aliases))
    assert kinds == [
        "Call",
        "Call",
        "Compare",
        "Compare",
        "Compare",
        "Compare",
        "Compare",
        "Compare",
        "Compare",
        "Dict",
        "MatchValue",
    ]
    assert list(branches(ast.parse(data), aliases_of([ast.parse(data)]))) == []
