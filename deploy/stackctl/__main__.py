"""Command line of the stack: `python -m deploy.stackctl COMMAND`. The Makefile calls it; so can you."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.stackctl import check, docker, docs, runtimes, stack
from deploy.stackctl.config import KEPT, knob_environment
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
        if args.command in ("down", "ps", "logs"):
            return without_config(args)
        if args.command == "up":
            return up(args.run_dir)
        if args.command == "reload":
            return reload(args.run_dir)
        config = stack.configure(args.run_dir)
        name = stack.resolve_runtime(config.settings.runtime)
        backend = runtimes.RUNTIMES[name]
        if args.command == "runtime":
            print(name)
        elif args.command == "check":
            return check.run_check(config, name, args.run_dir)
        elif args.command == "scale":
            backend.scale(args.run_dir, config, os.environ, args.replicas)
        elif args.command == "images":
            docker.build(docker.Project(knob_environment(config)), every=True)
        elif args.command == "wheelhouse":
            if backend.processes_here:  # wheels for this host's Python, else for the image's
                print(f"wheels in {docker.host_wheelhouse(config.settings)}")
            else:
                print(f"wheels in {docker.build_wheelhouse(knob_environment(config))}")
        else:
            backend.render(args.run_dir, config)
        return 0
    except (ConfigError, StackError) as error:
        print(f"stackctl {args.command}: {error}", file=sys.stderr)
        return 1


def without_config(args: argparse.Namespace) -> int:
    """down, ps and logs: to the runtime the stack was started with, named by this environment."""
    backend = runtimes.RUNTIMES[stack.existing_runtime(args.run_dir)]
    if args.command == "down":
        backend.down(args.run_dir, os.environ)
        stack.forget(args.run_dir.resolve())
    elif args.command == "ps":
        backend.ps(args.run_dir, os.environ)
    else:
        backend.logs(args.run_dir, os.environ, args.follow)
    return 0


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
        name = stack.configured_runtime(run_dir)
        if runtimes.RUNTIMES[name].needs_record:
            raise StackError(f"no running stack in {run_dir.resolve()}; start it with `make up`")
        handle = stack.Handle(name, run_dir.resolve(), stack.configure(run_dir), dict(os.environ))
    new = stack.configure(run_dir)
    changed = stack.changes(handle.config, new)
    for knob, old, value, source in changed:
        print(f"  {knob}: {old} -> {value} ({source})")
    if not changed:
        print(f"no knob changed; {handle.backend.reload_anyway}")
    kept = [f"{knob}={value.value}" for knob, value in new.values.items() if value.source == KEPT]
    if kept:
        print(f"kept from the environment the stack started with: {' '.join(kept)} (set one to change it)")
    handle.apply(new, os.environ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
