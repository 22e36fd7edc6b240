"""Bounded logs for the local runtime: copy stdin to a file that rotates at a size limit.

    gunicorn ... | python -m deploy.stackctl.logpipe .run/local/gunicorn.log --max-mb 20 --keep 3

Rotation is logging.handlers.RotatingFileHandler's (gunicorn.log -> gunicorn.log.1 -> ...), so at most
(keep + 1) x max-mb stay on disk however long a soak runs. Lines are copied whole, in chunks; the process
exits when every writer has closed its end of the pipe (the stack stopped).
"""

from __future__ import annotations

import argparse
import io
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import cast

CHUNK = 1 << 16


def copy(source: io.BufferedIOBase, handler: RotatingFileHandler) -> None:
    pending = b""
    while chunk := source.read1(CHUNK):
        pending += chunk
        complete, newline, pending = pending.rpartition(b"\n")
        if newline:
            write(handler, (complete + newline).decode("utf-8", "replace"))
    if pending:
        write(handler, pending.decode("utf-8", "replace"))


def write(handler: RotatingFileHandler, text: str) -> None:
    if handler.stream is None:
        handler.stream = handler._open()
    handler.stream.write(text)
    handler.stream.flush()
    if handler.maxBytes and handler.stream.tell() >= handler.maxBytes:
        handler.doRollover()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-mb", type=float, required=True, help="rotate past this size (MiB)")
    parser.add_argument("--keep", type=int, required=True, help="rotated files kept beside the live one")
    args = parser.parse_args(argv)
    handler = RotatingFileHandler(
        args.path, maxBytes=int(args.max_mb * (1 << 20)), backupCount=args.keep, encoding="utf-8"
    )
    try:
        copy(cast(io.BufferedIOBase, sys.stdin.buffer), handler)
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
