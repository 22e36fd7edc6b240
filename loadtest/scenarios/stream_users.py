"""stream — the ndjson streaming route: chunks must reach the client one by one through nginx.

Rows: `GET /api/stream?chunks=[n]` (time to response headers), `STREAM /api/stream first chunk` and
`STREAM /api/stream all chunks`. First chunk far below all chunks means nothing buffers the stream.
"""

import time

from locust import between, run_single_user, task

from loadtest.users import ApiUser, describe_failure, report_sample


class StreamUser(ApiUser):
    weight = 2
    wait_time = between(0.1, 0.5)
    chunks = 5
    interval = 0.2

    @task
    def stream(self) -> None:
        url = f"/api/stream?chunks={self.chunks}&interval={self.interval}"
        started = time.perf_counter()
        first: float | None = None
        lines = 0
        with self.client.get(url, name="/api/stream?chunks=[n]", stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(describe_failure(r))
                return
            r.success()
            try:
                # Locust's iter_lines() reads 1 KiB blocks, which hold back small chunks until the stream
                # ends; geventhttpclient's readline hands each line over as it arrives.
                while r._response.readline(b"\n"):
                    lines += 1
                    if first is None:
                        first = time.perf_counter()
            except Exception as error:
                self.report("all chunks", started, exception=error)
                return
        if first is not None:
            self.report("first chunk", started, response_time=(first - started) * 1000)
        problem = None if lines == self.chunks else ValueError(f"{lines} of {self.chunks} chunks")
        self.report("all chunks", started, exception=problem)

    def report(
        self,
        what: str,
        started: float,
        exception: Exception | None = None,
        response_time: float | None = None,
    ) -> None:
        report_sample(self.environment, "STREAM", f"/api/stream {what}", started, 0, exception, response_time)


if __name__ == "__main__":
    from loadtest.stack import default_host

    StreamUser.host = default_host()
    run_single_user(StreamUser)
