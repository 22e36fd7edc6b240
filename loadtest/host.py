"""Facts about the machine the experiments run on, printed beside their numbers (they are the machine's
numbers), and the load generator they share."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from deploy.stackctl import tools
from deploy.stackctl.errors import StackError
from loadtest.errors import LoadtestError
from service.settings import usable_cpus


def machine() -> dict[str, str]:
    """The CPU model, the CPUs this process may use, Python and the OS."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "usable_cpus": str(usable_cpus()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was besides the experiment."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def find_wrk() -> str:
    """wrk's path (drills and bench): from the OS, installed with apt-get when missing and we are root."""
    try:
        return tools.find_wrk()
    except StackError as error:
        raise LoadtestError(str(error)) from None
