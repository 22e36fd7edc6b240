"""mixed — the default: every behaviour at once, weighted by each user class's `weight`:
http 4, slow 2, stream 2, echo WebSocket 2, ticker WebSocket 1, sync 1, blocking 1, room member 1, room
publisher 1 (the rooms scenario's users, weighted down).

The blocking user is in the mix on purpose: watch every other row's tail latency move while it runs.
"""

from loadtest.scenarios.blocking_users import BlockingUser
from loadtest.scenarios.http_users import HttpApiUser
from loadtest.scenarios.rooms_users import RoomMemberUser, RoomPublisherUser
from loadtest.scenarios.slow_users import SlowUser
from loadtest.scenarios.stream_users import StreamUser
from loadtest.scenarios.sync_users import SyncUser
from loadtest.scenarios.websocket_users import EchoSocketUser, TickerSocketUser

__all__ = [
    "BlockingUser",
    "EchoSocketUser",
    "HttpApiUser",
    "RoomMemberUser",
    "RoomPublisherUser",
    "SlowUser",
    "StreamUser",
    "SyncUser",
    "TickerSocketUser",
]

if __name__ == "__main__":
    from locust import run_single_user

    from loadtest.stack import default_host

    HttpApiUser.host = default_host()
    run_single_user(HttpApiUser)
