"""The pure parts around an app's inputs, without pip or an engine: pip's failures in one line
(requirements.py), what keys the cached virtualenv, the worker's line in a halted gunicorn's log
(preflight.py), the app image's tag and staged build context (appimage.py)."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.stackctl import appimage
from deploy.stackctl.docker import app_pip_failure
from deploy.stackctl.preflight import halted_line
from deploy.stackctl.requirements import Source, digest, failure_line, platform_pins
from service.settings import load_settings

PINS = [
    "uvicorn[standard]==0.54.0",
    "gunicorn==27.0.1",
    "pydantic-settings==2.16.3",
    "prometheus-client==0.26.0",
]
KNOB = "APP_REQUIREMENTS=reqs.txt"


def sources(app_lines: list[str]) -> dict[str, Source]:
    return {
        "/x/pins.txt": Source("/x/pins.txt", PINS, platform=True),
        "/x/reqs.txt": Source("/x/reqs.txt", app_lines, platform=False),
    }


def pip_said(cannot: str, *caused_by: str) -> str:
    """pip 23-25's ResolutionImpossible report, as it prints it."""
    return "\n".join(
        [
            "Collecting fastapi==0.115.6 (from -r /x/reqs.txt (line 2))",
            f"ERROR: Cannot install {cannot} because these package versions have conflicting dependencies.",
            "",
            "The conflict is caused by:",
            *(f"    {cause}" for cause in caused_by),
            "",
            "To fix this you could try to:",
            "1. loosen the range of package versions you've specified",
            "",
            "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/...",
        ]
    )


def test_a_pin_of_the_app_against_a_pin_of_the_platform_names_both() -> None:
    output = pip_said(
        "prometheus-client==0.19.0 and prometheus-client==0.26.0",
        "The user requested prometheus-client==0.26.0",
        "The user requested prometheus-client==0.19.0",
    )
    line = failure_line(output, KNOB, sources(["prometheus-client==0.19.0"]), PINS)
    assert line == (
        "APP_REQUIREMENTS=reqs.txt: prometheus-client==0.19.0 conflicts with the platform's "
        "prometheus-client==0.26.0 (pyproject.toml `dependencies`)"
    )


def test_a_requirement_named_by_its_line_and_what_a_platform_pin_needs() -> None:
    output = pip_said(
        "-r /x/pins.txt (line 3) and pydantic==1.10.13",
        "The user requested pydantic==1.10.13",
        "pydantic-settings 2.16.3 depends on pydantic>=2.7.0",
    )
    line = failure_line(output, KNOB, sources(["# ours", "pydantic==1.10.13"]), PINS)
    assert line == (
        "APP_REQUIREMENTS=reqs.txt: pydantic==1.10.13 conflicts with the platform's "
        "pydantic-settings==2.16.3 (pyproject.toml `dependencies`): pydantic-settings 2.16.3 depends on "
        "pydantic>=2.7.0"
    )


def test_an_extra_and_another_spelling_of_a_platform_pin_are_still_the_platforms() -> None:
    output = pip_said("uvicorn==0.30.0 and uvicorn[standard]==0.54.0")
    line = failure_line(output, KNOB, sources(["uvicorn==0.30.0"]), PINS)
    assert "uvicorn==0.30.0 conflicts with the platform's uvicorn[standard]==0.54.0" in line
    output = pip_said("Prometheus_Client==0.19.0 and prometheus-client==0.26.0")
    assert "the platform's prometheus-client==0.26.0" in failure_line(output, KNOB, sources([]), PINS)


def test_two_requirements_of_the_app_itself() -> None:
    output = pip_said(
        "-r /x/reqs.txt (line 1) and starlette==0.27.0",
        "The user requested starlette==0.27.0",
        "fastapi 0.115.6 depends on starlette<0.42.0 and >=0.40.0",
    )
    line = failure_line(output, KNOB, sources(["fastapi==0.115.6  # ours", "starlette==0.27.0"]), PINS)
    assert line == (
        "APP_REQUIREMENTS=reqs.txt: fastapi==0.115.6 and starlette==0.27.0 (both the app's) cannot be "
        "installed together: fastapi 0.115.6 depends on starlette<0.42.0 and >=0.40.0"
    )


def test_other_failures_are_one_line_too() -> None:
    missing = "ERROR: Could not find a version\nERROR: No matching distribution found for fastapi==9.9.9"
    assert failure_line(missing, KNOB, sources([]), PINS) == (
        f"{KNOB}: pip found no distribution of fastapi==9.9.9 (a typo, or not in the index or the wheelhouse)"
    )
    odd = "something\nERROR: Invalid requirement: 'fastapi=='\nmore"
    assert failure_line(odd, KNOB, sources([]), PINS) == (
        f"{KNOB}: pip could not install it beside the platform's pins: "
        "ERROR: Invalid requirement: 'fastapi=='"
    )
    for line in (failure_line(text, KNOB, sources([]), PINS) for text in (missing, odd, "")):
        assert "\n" not in line


def test_the_virtualenv_key_covers_pins_the_file_and_what_it_includes(tmp_path: Path) -> None:
    base = tmp_path / "base.txt"
    base.write_text("starlette==0.41.3\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("-r base.txt\nfastapi==0.115.6\n")
    first = digest(requirements, PINS, "3.11.7")
    assert digest(requirements, PINS, "3.11.7") == first
    assert digest(requirements, PINS, "3.12.1") != first
    assert digest(requirements, PINS[:-1], "3.11.7") != first
    base.write_text("starlette==0.41.2\n")
    assert digest(requirements, PINS, "3.11.7") != first


def test_the_platform_pins_are_pyprojects_dependencies_without_a_framework() -> None:
    names = {pin.split("[")[0].split("==")[0] for pin in platform_pins()}
    assert {"gunicorn", "uvicorn", "uvicorn-worker", "prometheus-client"} <= names
    assert not names & {"fastapi", "starlette"}


def test_the_workers_own_line_is_found_in_a_halted_gunicorns_log() -> None:
    log = "\n".join(
        [
            "[2026-01-01 12:00:00 +0000] [11] [INFO] Waiting for application startup.",
            "APP_MODULE=main:app: lifespan startup raised RuntimeError: boom",
            "Traceback (most recent call last):",
            "RuntimeError: boom",
            "[2026-01-01 12:00:00 +0000] [11] [ERROR] APP_MODULE=main:app: lifespan startup raised "
            "RuntimeError: boom",
            "[2026-01-01 12:00:00 +0000] [10] [ERROR] Reason: Worker failed to boot.",
        ]
    )
    assert halted_line(log) == "APP_MODULE=main:app: lifespan startup raised RuntimeError: boom"
    assert halted_line("[2026-01-01 12:00:00 +0000] [10] [ERROR] Reason: Worker failed to boot.") is None


def test_each_app_image_is_tagged_apart_from_the_demos(tmp_path: Path) -> None:
    demo = load_settings()
    chat = load_settings(app_module="main:app", app_src="examples/chat")
    other = load_settings(app_module="main:app", app_src=str(tmp_path / "chat"))
    assert appimage.image(demo) == "blueprint-app:local"
    assert appimage.image(chat).startswith("blueprint-app:chat-")
    assert appimage.image(chat) == appimage.image(
        load_settings(app_module="other:app", app_src="examples/chat")
    )
    assert appimage.image(other).startswith("blueprint-app:chat-") and appimage.image(
        other
    ) != appimage.image(chat)


def test_the_staged_context_holds_the_platform_the_app_and_its_requirements(tmp_path: Path) -> None:
    src = tmp_path / "outside the repository"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("")
    (src / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"")
    (src / ".venv").mkdir()
    (src / "requirements").mkdir()
    (src / "requirements" / "base.txt").write_text("starlette==0.41.3\n")
    (src / "requirements" / "app.txt").write_text("-r base.txt\nfastapi==0.115.6\n")
    settings = load_settings(
        app_module="pkg:app", app_src=str(src), app_requirements=str(src / "requirements" / "app.txt")
    )
    run_dir = tmp_path / "run"
    overlay = appimage.stage(run_dir, settings, offline=False)
    context = run_dir / appimage.CONTEXT
    assert (context / "deploy" / "Dockerfile.app").is_file() and (context / "service" / "platform").is_dir()
    assert (context / "app" / "requirements" / "requirements.txt").read_text().startswith("-r base.txt")
    assert (context / "app" / "requirements" / "base.txt").is_file()
    assert (context / "app" / "src" / "pkg" / "__init__.py").is_file()
    assert not (context / "app" / "src" / "pkg" / "__pycache__").exists()
    assert not (context / "app" / "src" / ".venv").exists()
    service = json.loads(overlay.read_text().split("\n", 1)[1])["services"]["app"]
    assert service == {"build": {"context": str(context.resolve())}, "image": appimage.image(settings)}


def test_a_conflict_in_the_image_build_names_the_apps_line_and_the_platforms_pin(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("fastapi==0.128.8\nprometheus-client==0.19.0\n")
    build_output = "\n".join(
        [
            "Step 9/22 : RUN python3 -m venv /opt/venv  && if [ -f /build/app/requirements/... ] ...",
            " ---> Running in 0123456789ab",
            f"ERROR: Cannot install -r {appimage.IMAGE_REQUIREMENTS} (line 2) and prometheus-client==0.26.0 "
            "because these package versions have conflicting dependencies.",
            "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/...",
            "The command '/bin/sh -c python3 -m venv /opt/venv ...' returned a non-zero code: 1",
        ]
    )
    line = app_pip_failure(build_output, appimage.IMAGE_PINS, appimage.IMAGE_REQUIREMENTS, requirements, PINS)
    assert line == (
        f"APP_REQUIREMENTS={requirements}: prometheus-client==0.19.0 conflicts with the platform's "
        "prometheus-client==0.26.0 (pyproject.toml `dependencies`)"
    )
