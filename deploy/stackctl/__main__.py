"""Command line of the stack: `python -m deploy.stackctl COMMAND`. The Makefile calls it; so can you."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.stackctl import check, docker, docs, local, stack, swarm
from deploy.stackctl.config import KEPT, ROOT, Effective, read_env_file
from deploy.stackctl.errors import AlreadyRunning, StackError
from service.settings import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stackctl", description=__doc__)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=stack.DEFAULT_RUN_DIR,
        help="where a local stack keeps configs, pids and logs (default .run/local)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the stack and wait until /healthz answers through nginx"),
        ("down", "stop what `up` started and wait until its ports are free"),
        ("reload", "apply changed settings without dropping requests"),
        ("ps", "list the stack's processes"),
        ("render", "write the effective stack.env and nginx.conf into the run dir, start nothing"),
        ("runtime", "print the runtime `up` would use"),
        ("check", "print the effective config, run each layer's validator and the ordering rules"),
    ):
        sub.add_parser(name, help=text)
    scale_parser = sub.add_parser("scale", help="docker/swarm runtime: run N app containers behind nginx")
    scale_parser.add_argument("replicas", type=int)
    sub.add_parser("images", help="docker runtime: build the images (OFFLINE=1: from ./wheelhouse)")
    sub.add_parser("wheelhouse", help="download wheels for PYTHON_IMAGE's Python into ./wheelhouse")
    logs_parser = sub.add_parser("logs", help="show the logs (-f to follow)")
    logs_parser.add_argument("-f", "--follow", action="store_true")
    table = sub.add_parser("settings-table", help="print docs/SETTINGS.md from service/settings.py")
    table.add_argument("--write", action="store_true", help="write docs/SETTINGS.md instead of printing")
    args = parser.parse_args(argv)

    try:
        if args.command == "settings-table":
            return docs.settings_table(write=args.write)
        run = local.RunDir(args.run_dir)
        if args.command in ("down", "ps", "logs"):
            return dispatch_without_config(args, run)
        if args.command == "up":
            return up(args.run_dir)
        if args.command == "reload":
            return reload(args.run_dir)
        config = stack.configure(args.run_dir)
        runtime = stack.resolve_runtime(config.settings.runtime)
        if args.command == "runtime":
            print(runtime)
            return 0
        if args.command == "check":
            return check.run_check(config, runtime)
        if runtime == "swarm" and args.command == "scale":
            swarm.scale(config, args.replicas)
            return 0
        if runtime in ("docker", "swarm") or args.command in ("scale", "images", "wheelhouse"):
            return dispatch_docker(args, config)
        local.prepare(run, config)  # render
        print(f"rendered {run.env_file} and {run.nginx_conf}")
        return 0
    except (ConfigError, StackError) as error:
        print(f"stackctl {args.command}: {error}", file=sys.stderr)
        return 1


def up(run_dir: Path) -> int:
    try:
        stack.start(stack.configured_runtime(run_dir), run_dir=run_dir, quiet=False)
    except AlreadyRunning as running:
        print(running)
    return 0


def reload(run_dir: Path) -> int:
    """Re-render from the environment, keeping what the stack was started with; say what changes."""
    handle = stack.attach(run_dir)
    if handle is None:
        runtime = stack.configured_runtime(run_dir)
        if runtime == "local":
            raise StackError(f"no running stack in {run_dir.resolve()}; start it with `make up`")
        handle = stack.Handle(runtime, run_dir.resolve(), stack.configure(run_dir), dict(os.environ))
    new = stack.configure(run_dir)
    changed = stack.changes(handle.config, new)
    for name, old, value, source in changed:
        print(f"  {name}: {old} -> {value} ({source})")
    if not changed and handle.runtime == "swarm":
        print("no knob changed; replacing the app tasks anyway (a rolling update)")
    elif not changed:
        print("no knob changed; reloading anyway (new workers, nginx re-reads its config)")
    kept = [f"{name}={value.value}" for name, value in new.values.items() if value.source == KEPT]
    if kept:
        print(f"kept from the environment the stack started with: {' '.join(kept)} (set one to change it)")
    handle.apply(new, os.environ)
    return 0


def dispatch_docker(args: argparse.Namespace, config: Effective) -> int:
    if args.command == "scale":
        docker.scale(config, args.replicas)
    elif args.command == "images":
        docker.build(docker.Project(docker.knob_environment(config)), loadtest=True)
    elif args.command == "wheelhouse":
        print(f"wheels in {docker.build_wheelhouse(docker.knob_environment(config))}")
    else:
        raise StackError(f"`{args.command}` is for the local runtime only (RUNTIME=local)")
    return 0


def existing_runtime(run: local.RunDir) -> str:
    """Which runtime down/ps/logs talk to: RUNTIME if set, else the one a stack was started with."""
    dotenv = read_env_file(ROOT / ".env") if (ROOT / ".env").is_file() else {}
    requested = os.environ.get("RUNTIME") or dotenv.get("RUNTIME")
    if requested in stack.RUNTIMES:
        return requested
    previous = stack.recorded(run.path)
    if previous is not None:
        return previous.runtime
    if run.load_state() is not None or not stack.docker_engine_reachable():
        return "local"
    return "docker"


def dispatch_without_config(args: argparse.Namespace, run: local.RunDir) -> int:
    runtime = existing_runtime(run)
    if runtime in ("swarm", "docker"):
        engine = swarm if runtime == "swarm" else docker
        if args.command == "down":
            engine.down()
            stack.forget(run.path)
        elif args.command == "ps":
            engine.ps()
        else:
            engine.logs(args.follow)
        return 0
    if args.command == "down":
        local.down(run)
        stack.forget(run.path)
    elif args.command == "ps":
        local.ps(run)
    else:
        local.logs(run, args.follow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
