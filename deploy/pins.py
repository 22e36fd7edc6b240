"""Print the pinned requirements of pyproject.toml, one per line: `python deploy/pins.py [EXTRA ...]`.

The Dockerfiles and the Makefile install from this output so that pyproject.toml stays the only place
versions are written down. Standard library only: it runs inside bare base images.
"""

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned_requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"pins: unknown extra {unknown[0]!r}; choose from {', '.join(sorted(optional))}")
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += optional[extra]
    return requirements


if __name__ == "__main__":
    print("\n".join(pinned_requirements(sys.argv[1:])))
