import json
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.stackctl import local, tools
from deploy.stackctl.errors import StackError


def test_missing_nginx_without_root_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    monkeypatch.setattr(tools.Path, "exists", lambda self: False)
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tools.sys, "platform", "linux")
    with pytest.raises(StackError, match=r"install it with: sudo apt-get install"):
        tools.find_nginx()


def test_state_survives_a_round_trip(tmp_path: Path) -> None:
    run = local.RunDir(tmp_path)
    state = local.State(1, 2, 8080, "127.0.0.1:8000", 8081, 25, [3, 4])
    run.state.write_text(json.dumps(asdict(state)))
    assert run.load_state() == state
    run.state.write_text("{broken")
    assert run.load_state() is None
