"""The preflight of `make loadtest`: an app of your own (APP_MODULE) has no /api/info, and its 404 still
proves the stack answers; any other refusal stops the run in one line. A plain HTTP server stands in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.stack import LoadtestError, stack_info


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A server on a free loopback port that answers every GET with `status`; yields its URL."""

    class Answers(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_app_without_api_info_answers_with_unknown_settings() -> None:
    with answering(404) as url:
        assert stack_info(url) == {}


def test_any_other_refusal_stops_the_run_in_one_line() -> None:
    with answering(502) as url, pytest.raises(LoadtestError, match=r"answered 502: is this the blueprint"):
        stack_info(url)
