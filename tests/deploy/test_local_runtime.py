import json
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.stackctl import tools
from deploy.stackctl.errors import StackError
from deploy.stackctl.rundir import RunDir, Started, State


def test_missing_nginx_without_root_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    monkeypatch.setattr(tools.Path, "exists", lambda self: False)
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tools.sys, "platform", "linux")
    with pytest.raises(StackError, match=r"install it with: sudo apt-get install"):
        tools.find_nginx()


def test_state_survives_a_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    started = {"gunicorn": Started(1, 3, "SIGTERM", 30), "nginx": Started(2, 4, "SIGQUIT", 30)}
    state = State(started, [("HTTP_PORT", "127.0.0.1", 8080)], 8080, "127.0.0.1:8000", 8081)
    run.state.write_text(json.dumps(asdict(state)))
    assert run.load_state() == state
    run.state.write_text("{broken")
    assert run.load_state() is None
