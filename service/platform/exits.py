"""Why each gunicorn worker ended, recorded by the master in PROMETHEUS_MULTIPROC_DIR/worker-exits.json,
which every worker's metrics expose as `app_worker_exits_total{reason}` and, for the last RECENT exits,
`app_worker_exit_time_seconds{worker="<pid>",reason}` (metrics.ExitsCollector). A file of its own, not a
prometheus-client counter: the master imports the metrics (through the worker class) before its
on_starting hook clears the directory, and would go on writing into a file that no longer exists.

The reason comes from what deploy/gunicorn.conf.py's hooks see:
- the worker's own note, left beside it when it begins to leave (ours: `recycle`, it reached
  GUNICORN_MAX_REQUESTS, or `signal`, told to stop) or, for another worker class (gunicorn's `asgi`), as it
  exits in order (gunicorn's `worker_exit` hook): `exit`, a reason that class does not say;
- whether the master killed it as hung (gunicorn sets `worker.aborted` with its WORKER TIMEOUT line);
- what the master itself is doing: a reload (HUP: `on_reload`) replaces every worker older than it; a
  stopping master has closed its listeners.

The reasons: timeout, recycle, reload, stop, terminated (a TERM from outside the master, or gunicorn
scaling down on TTOU), exit, and crash: no note at all — the worker was killed by a signal (SIGKILL, the
OOM killer), crashed, or left with os._exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

REASONS = ("timeout", "recycle", "reload", "stop", "terminated", "exit", "crash")
RECENT = 16  # exits listed by pid; the counts cover every exit since the master started
STATE = "worker-exits.json"
NOTE_PREFIX = "exit-"
# On the Arbiter: the newest worker's age and the time when the last reload began.
RELOAD_AGE, RELOAD_AT = "blueprint_reload_age", "blueprint_reload_at"


def directory() -> Path | None:
    found = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(found) if found else None


def leave_note(pid: int, why: str) -> None:
    """In the worker, as soon as it knows why it is leaving; the first note stands. Our worker notes it
    when its exit begins: uvicorn ends a signalled process by raising the signal again once it is done, so
    nothing after that runs."""
    where = directory()
    if where is not None:
        with contextlib.suppress(OSError), (where / f"{NOTE_PREFIX}{pid}").open("x") as note:
            note.write(why)


def reload_began(server: Any) -> None:
    setattr(server, RELOAD_AGE, server.worker_age)
    setattr(server, RELOAD_AT, time.time())


def reason(server: Any, worker: Any, note: str | None, noted_at: float = 0.0) -> str:
    if worker.aborted:
        return "timeout"
    if note is None:
        return "crash"
    if note != "signal":
        return note if note in REASONS else "exit"
    if not server.LISTENERS:
        return "stop"
    # A worker the reload replaced; one already leaving when it began (a TERM of its own) was not.
    if worker.age <= getattr(server, RELOAD_AGE, 0) and noted_at >= getattr(server, RELOAD_AT, 0.0):
        return "reload"
    return "terminated"


def worker_ended(server: Any, worker: Any) -> str:
    """In the master, once the worker is reaped: its reason, recorded."""
    where = directory()
    if where is None:
        return reason(server, worker, None)
    note_file = where / f"{NOTE_PREFIX}{worker.pid}"
    note, noted_at = None, 0.0
    with contextlib.suppress(OSError):
        noted_at = note_file.stat().st_mtime
        note = note_file.read_text().strip()
        note_file.unlink()
    why = reason(server, worker, note, noted_at)
    record(where, worker.pid, why, time.time())
    return why


def record(where: Path, pid: int, why: str, at: float) -> None:
    state = read(where)
    state["counts"][why] = state["counts"].get(why, 0) + 1
    state["recent"] = [*state["recent"], [pid, why, at]][-RECENT:]
    temporary = where / f".{STATE}.{os.getpid()}"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, where / STATE)  # a reader sees the old file or the new one, never half of one


def read(where: Path) -> dict[str, Any]:
    """{"counts": {reason: n}, "recent": [[pid, reason, unix time], ...]}"""
    try:
        state = json.loads((where / STATE).read_text())
        if isinstance(state.get("counts"), dict) and isinstance(state.get("recent"), list):
            return dict(state)
    except (OSError, ValueError, AttributeError):
        pass
    return {"counts": {}, "recent": []}


def clear(where: str) -> None:
    """At the master's start: no notes or exits of a previous master."""
    for path in [*Path(where).glob(f"{NOTE_PREFIX}*"), Path(where) / STATE]:
        path.unlink(missing_ok=True)
