"""rooms — WebSocket rooms across every worker: members spread over 4 rooms, publishers POSTing to them.

Rows: `/api/rooms/[room]/messages` (the publishes), `WS /ws/rooms connect`, and the rooms'
own (loadtest/users/rooms.py): `/ws/rooms deliver` — its rps is deliveries/s, its p50/p99 the
publish-to-receive latency across workers; `/ws/rooms missing` — failures, must stay 0;
`/ws/rooms duplicate`. A reload or a recycle during the run shows as `reconnect after 1012` rows, and
missing stays 0: members resume with `after`.
"""

from locust import between, constant_pacing, run_single_user, task

from loadtest.users.rooms import RoomMember, RoomPublisher


class RoomMemberUser(RoomMember):
    weight = 8
    wait_time = between(0, 0.5)


class RoomPublisherUser(RoomPublisher):
    weight = 1
    wait_time = constant_pacing(0.1)  # 10 messages/s per publisher, over the rooms in turn

    @task
    def publish_one(self) -> None:
        self.publish()


if __name__ == "__main__":
    from loadtest.stack import default_host

    RoomPublisherUser.host = default_host()
    run_single_user(RoomPublisherUser)
