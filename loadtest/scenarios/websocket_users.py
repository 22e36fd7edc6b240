"""websocket — long-lived WebSockets through nginx: echo round trips and server pushes.

Rows (request type WS): `/ws/echo connect`, `/ws/echo round-trip`, `/ws/ticker connect`, `/ws/ticker push`
(time = the push's age on arrival), and `... reconnect after 1012` when a reload or shutdown closes the
socket (uvicorn sends 1012). Each connection is held for `--ws-hold` seconds (LOCUST_WS_HOLD).
"""

from locust import between, run_single_user

from loadtest.users import EchoRoundTrips, TickerPushes


class EchoSocketUser(EchoRoundTrips):
    weight = 2
    wait_time = between(0, 0.5)
    message_interval = 0.5


class TickerSocketUser(TickerPushes):
    weight = 1
    wait_time = between(0, 0.5)
    interval = 0.5


if __name__ == "__main__":
    from loadtest.stack import default_host

    EchoSocketUser.host = default_host()
    run_single_user(EchoSocketUser)
