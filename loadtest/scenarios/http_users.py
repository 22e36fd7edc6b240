"""http — the plain API mix: ping, echo and info on FastHttpUser, weighted like a typical read-heavy API.

What to look at: the requests/s the stack sustains and the p95 of /api/ping, the smallest request there is.
"""

import random
import string

from locust import between, run_single_user, task

from loadtest.users import ApiUser, judge


class HttpApiUser(ApiUser):
    weight = 4
    wait_time = between(0.05, 0.2)

    @task(6)
    def ping(self) -> None:
        self.get_json("/api/ping", name="/api/ping", expect="pong")

    @task(3)
    def echo(self) -> None:
        text = "".join(random.choices(string.ascii_letters, k=random.randint(1, 256)))
        # name= groups every body size under one row; the body is checked, not just the status.
        with self.client.post("/api/echo", json={"text": text}, name="/api/echo", catch_response=True) as r:
            body = judge(r, expect="text")
            if body is not None and body["text"] != text:
                r.failure("echo returned a different text")

    @task(1)
    def info(self) -> None:
        self.get_json("/api/info", name="/api/info", expect="settings")


if __name__ == "__main__":
    from loadtest.stack import default_host

    HttpApiUser.host = default_host()
    run_single_user(HttpApiUser)
