"""Load for the chat example: `make loadtest SCENARIO=examples/chat/locustfile.py` (USERS, RUN_TIME, SHAPE as
for the built-in scenarios), against the stack `make up APP_MODULE=main:app APP_SRC=examples/chat ...` runs.

Rows: `POST /message` and `GET /` (FastHttpUser, failures say who answered: the app, or nginx's JSON with
`layer`), `GET /slow` (an awaited delay), and `WS /ws connect` / `WS /ws round-trip` (websocket-client with a
receiving greenlet, as loadtest/scenarios/websocket_users.py; a 1012 close on a reload is reconnected and
counted as `reconnect after 1012`, not as a failure). Base users and thresholds: loadtest/users/.
"""

import itertools

from locust import between, run_single_user, task

from loadtest.users import ApiUser, EchoRoundTrips, describe_failure

sequence = itertools.count(1)


class ChatUser(ApiUser):
    weight = 4
    wait_time = between(0.05, 0.2)

    @task(5)
    def post_message(self) -> None:
        body = {"author": f"user-{id(self) % 1000}", "text": f"message {next(sequence)} from locust"}
        with self.client.post("/message", json=body, name="/message", catch_response=True) as response:
            if response.status_code != 201:  # 201 Created: this route's success
                response.failure(describe_failure(response))
            elif "id" not in response.json():
                response.failure(f"201 without an id: {response.text[:80]}")
            else:
                response.success()

    @task(3)
    def root(self) -> None:
        self.get_json("/", name="/", expect="message")

    @task(1)
    def slow(self) -> None:
        self.get_json("/slow?delay=0.2", name="/slow", expect="slept_s")


class ChatSocketUser(EchoRoundTrips):
    weight = 1
    wait_time = between(0, 0.5)
    path = "/ws"
    message_interval = 0.5


if __name__ == "__main__":
    from loadtest.stack import default_host

    ChatUser.host = default_host()
    run_single_user(ChatUser)
