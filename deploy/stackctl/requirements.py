"""What pip installs for an app beside the platform, and what pip's failures mean in one line.

The platform's pins are pyproject.toml's `dependencies` (deploy/pins.py); the app's are APP_REQUIREMENTS.
pip resolves both together; when they cannot be installed together it says so over a dozen lines
(ResolutionImpossible). `failure_line` turns that into one line naming APP_REQUIREMENTS and both sides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.pins import pinned_requirements

PLATFORM_SOURCE = "pyproject.toml `dependencies`"
INCLUDE = re.compile(r"^\s*(?:-r|--requirement|-c|--constraint)[\s=]+(\S+)")
CANNOT_INSTALL = re.compile(r"Cannot install (.+?) because these package versions have conflicting")
FROM_FILE = re.compile(r"^-r (.+) \(line (\d+)\)$")
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$")
NO_DISTRIBUTION = re.compile(r"No matching distribution found for (\S+)")


def platform_pins() -> list[str]:
    """The platform's own requirements: what runs any ASGI app inside our worker."""
    return pinned_requirements([])


def files_of(path: Path, seen: set[Path] | None = None) -> list[Path]:
    """The requirements file and every file it includes (-r, -c), each once, in order."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    found = [path]
    for line in path.read_text(errors="replace").splitlines():
        included = INCLUDE.match(line)
        if included:
            found += files_of(path.parent / included.group(1), seen)
    return found


def digest(requirements: Path | None, pins: Iterable[str], *extra: str) -> str:
    """A short hash of what an environment installs: the pins, the file (and what it includes), extras."""
    hashed = hashlib.sha256("\n".join([*pins, "--", *extra]).encode())
    for path in files_of(requirements) if requirements else []:
        hashed.update(path.read_bytes())
    return hashed.hexdigest()[:16]


def canonical(requirement: str) -> str:
    """A requirement's text as pip prints it back, for comparing: the name in lower case with `_` and `.` as
    `-`, no blanks."""
    found = NAME.match(requirement)
    if found is None:
        return requirement.strip()
    return re.sub(r"[-_.]+", "-", found.group(1)).lower() + found.group(2).replace(" ", "")


@dataclass(frozen=True)
class Source:
    """A requirements file pip was given, as pip names it in its messages."""

    path: str  # as passed to pip: pip repeats it in `-r PATH (line N)`
    lines: list[str]  # the file's lines, as pip numbers them (from 1)
    platform: bool  # the platform's pins (else the app's)

    def line(self, number: int) -> str:
        text = self.lines[number - 1] if 0 < number <= len(self.lines) else ""
        return text.split(" #", 1)[0].strip() or f"line {number}"


def named(token: str, sources: Mapping[str, Source], pins: Iterable[str]) -> tuple[str, bool]:
    """One requirement of pip's `Cannot install A and B`: its text, and whether it is the platform's."""
    in_file = FROM_FILE.match(token)
    if in_file and in_file.group(1) in sources:
        source = sources[in_file.group(1)]
        return source.line(int(in_file.group(2))), source.platform
    return token, canonical(token) in {canonical(pin) for pin in pins}


def split_names(listed: str) -> list[str]:
    """pip's `A, B and C` as [A, B, C] (a requirement's own commas have no blank after them)."""
    head, _, last = listed.rpartition(" and ")
    return [*(part for part in head.split(", ") if part), last] if head else [listed]


def causes(output: str) -> list[str]:
    """pip's `The conflict is caused by:` lines other than `The user requested ...`."""
    lines = output.splitlines()
    try:
        start = next(n for n, line in enumerate(lines) if line.strip() == "The conflict is caused by:")
    except StopIteration:
        return []
    found = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.strip().startswith("The user requested"):
            found.append(line.strip())
    return found


def failure_line(output: str, knob: str, sources: Mapping[str, Source], pins: Iterable[str]) -> str:
    """pip's failure to install the platform's pins and the app's requirements, in one line that starts
    with `knob` (APP_REQUIREMENTS=path) and names both requirements when they conflict."""
    pins = list(pins)
    why = "; ".join(causes(output))
    because = f": {why}" if why else ""
    conflict = CANNOT_INSTALL.search(output)
    if conflict:
        sides = [named(token, sources, pins) for token in split_names(conflict.group(1))]
        theirs = [text for text, platform in sides if platform]
        mine = [text for text, platform in sides if not platform]
        if mine and theirs:
            return (
                f"{knob}: {', '.join(mine)} conflicts with the platform's {', '.join(theirs)} "
                f"({PLATFORM_SOURCE}){because}"
            )
        if len(mine) > 1:
            return f"{knob}: {' and '.join(mine)} (both the app's) cannot be installed together{because}"
        return f"{knob}: pip cannot install {' and '.join(text for text, _ in sides)} together{because}"
    missing = NO_DISTRIBUTION.search(output)
    if missing:
        found = missing.group(1)
        return f"{knob}: pip found no distribution of {found} (a typo, or not in the index or the wheelhouse)"
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    last = errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1].strip()
    return f"{knob}: pip could not install it beside the platform's pins: {last}"
