"""Rooms through nginx, gunicorn and a real redis-server (the local runtime starts it as a component): a
message crosses workers; members resume across a reload under load with no gap and no duplicate; a member
that reads nothing is closed with 1013 while the others keep their latency; Redis stopped gives JSON 503s
and 1011 closes, Redis back gives resumed members, and nothing restarts."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
import redis
import websocket

from loadtest.rooms import Ledger, Member, percentile
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack

# A reload that ends in seconds: sockets closed with 1012 over 1 s; nginx's idle pooled connections closed
# by nginx before the drain's end (rule 4), not by an exiting worker racing a POST (502).
QUICK_DRAIN = {
    "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "3",
    "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "2",
    "GUNICORN_GRACEFUL_TIMEOUT": "5",
    "UVICORN_WS_CLOSE_SPREAD": "1",
}


def wait_until(condition: Callable[[], bool], within: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def connected(url: str, **options: object) -> Iterator[websocket.WebSocket]:
    """websocket-client's close() leaves the socket open: shutdown() closes it."""
    ws = websocket.create_connection(url, **options)
    try:
        yield ws
    finally:
        ws.close(timeout=1)
        ws.shutdown()


def redis_of(stack: Stack) -> redis.Redis:
    return redis.Redis(port=int(stack.env["REDIS_PORT"]), decode_responses=True, socket_timeout=5)


def workers_with_members(stack: Stack) -> set[str]:
    """The workers whose rooms talked to Redis: each names its connections rooms-<pid>."""
    clients = redis_of(stack).client_list()
    return {c["name"] for c in clients if c.get("name", "").startswith("rooms-")}


def test_a_message_published_through_one_worker_reaches_the_members_on_every_worker(tmp_path: Path) -> None:
    stop = threading.Event()
    with running(make_stack(tmp_path / "run", WEB_CONCURRENCY="2")) as stack:
        assert stack.handle is not None
        workers = {f"rooms-{pid}" for pid in stack.handle.worker_pids()}
        members: list[Member] = []
        while workers_with_members(stack) != workers:
            # The kernel hands each connection to a worker that is waiting in accept; on a loaded host one
            # worker took every handshake, burst or not. So each burst joins while a /api/blocking request
            # holds the event loop of whichever worker took it: the burst goes to the other one.
            assert len(members) < 80, f"{len(members)} members all joined on {workers_with_members(stack)}"
            with ThreadPoolExecutor(1) as pool:
                blocked = pool.submit(httpx2.get, f"{stack.url}/api/blocking?delay=1.5", timeout=30)
                time.sleep(0.5)
                burst = [Member(stack.ws_url, "lobby", stop) for _ in range(10)]
                for member in burst:
                    member.start()
                assert all(member.connected.wait(10) for member in burst)
                assert blocked.result().status_code == 200
            members += burst
        ids = []
        with httpx2.Client(base_url=stack.url) as client:
            for n in range(20):  # each POST on whichever worker takes it
                answer = client.post("/api/rooms/lobby/messages", json={"data": {"n": n, "t": time.time()}})
                assert answer.status_code == 202, answer.text
                assert set(answer.json()) == {"id"}
                ids.append(answer.json()["id"])
        with connected(f"{stack.ws_url}/ws/rooms/lobby") as talker:
            talker.send(json.dumps({"data": "from a member"}))
            echoed = json.loads(talker.recv())
        wait_until(lambda: all(len(m.ids) == 21 for m in members), what="every message at every member")
        stop.set()
    assert echoed["data"] == "from a member" and echoed["room"] == "lobby"
    assert set(echoed) == {"id", "room", "data", "sent_at"}
    assert len(set(ids)) == 20 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    for member in members:
        assert member.ids == [*ids, echoed["id"]], "every member, on either worker, gets all, in order"
    assert percentile([ms for m in members for ms in m.latencies_ms], 99) is not None


def test_members_resume_across_a_reload_under_load_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    with running(make_stack(tmp_path / "run", WEB_CONCURRENCY="2", **QUICK_DRAIN)) as stack:
        assert stack.handle is not None
        ledger = Ledger(stack.ws_url, stack.url, rooms=2, members_per_room=5, rate=100)
        ledger.start()
        time.sleep(1.0)
        old = set(stack.handle.worker_pids())
        stack.handle = stack.handle.reload()
        time.sleep(1.0)
        ledger.stop()
        assert not old & set(stack.handle.worker_pids()), "every worker was replaced"
    result = ledger.check()
    assert result["published"] > 200 and not result["refused"], result
    assert result["closes"].get("1012", 0) >= 10, f"every member moved to a new worker: {result}"
    assert (result["missing"], result["duplicates"], result["out_of_order"]) == (0, 0, 0), result
    assert result["fatal"] == [] and result["unacknowledged"] == 0, result


def read_close_code(ws: websocket.WebSocket, within: float) -> tuple[int, int]:
    """Reads until the close frame: (frames read before it, its code)."""
    ws.settimeout(within)
    frames = 0
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return frames, struct.unpack("!H", frame.data[:2])[0]
        frames += 1


def test_a_member_that_reads_nothing_is_closed_with_1013_and_the_others_keep_their_latency(
    tmp_path: Path,
) -> None:
    """One worker, so the slow member shares it with the others. A member publishes 48 kB messages (bodies
    this big through POST would go to nginx's temp files, which a run as root cannot write under pytest's
    0700 directories): 100 before the slow member joins (the others' baseline latency), then 300, 14 MB,
    which fill the socket buffers between the slow member and the app (nginx's and the kernel's)."""
    knobs = {
        "WEB_CONCURRENCY": "1",
        "ROOMS_SEND_QUEUE": "8",
        "ROOMS_MAX_MESSAGE_BYTES": "65536",
        "ROOMS_PUBLISH_RATE": "0",
    }
    stop = threading.Event()
    with running(make_stack(tmp_path / "run", **knobs)) as stack:
        others = [Member(stack.ws_url, "feed", stop, f"fast{n}") for n in range(4)]
        talker = Member(stack.ws_url, "feed", stop, "talker")  # reads what it publishes, as members do
        for member in [*others, talker]:
            member.start()
            assert member.connected.wait(10)
        talk(talker, others, 100)
        baseline = [ms for member in others for ms in member.latencies_ms]
        small_buffer = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        with connected(f"{stack.ws_url}/ws/rooms/feed", sockopt=small_buffer) as slow:
            talk(talker, others, 300)
            frames, code = read_close_code(slow, within=30)
        ids = others[0].ids[100:]
        resume = f"{stack.ws_url}/ws/rooms/feed?after={ids[frames - 1]}"
        with connected(resume) as resumed:
            resumed.settimeout(10)
            rest = [json.loads(resumed.recv())["id"] for _ in range(len(ids) - frames)]
        stop.set()
        for member in [*others, talker]:
            member.join(timeout=10)
    assert code == 1013, "the member that read nothing was closed with 1013"
    assert 0 < frames < len(ids), f"it got {frames} frames before the close, of {len(ids)}"
    assert rest == ids[frames:], "resumed with after: the rest, no gap"
    assert [(member.ids == others[0].ids, dict(member.closes)) for member in others] == [(True, {})] * 4
    stalled = [ms for member in others for ms in member.latencies_ms][len(baseline) :]
    before, during = percentile(baseline, 99), percentile(stalled, 99)
    assert before is not None and during is not None
    # A hub that waited for the slow member would hold every message for seconds; these are milliseconds
    # (a busy test machine's noise included).
    assert during < 3 * before + 100, f"the others' p99 publish-to-receive: {before} ms, then {during} ms"


def talk(talker: Member, others: list[Member], count: int) -> None:
    """`count` messages of 48 kB from the talker; back once every member got them."""
    assert talker.socket is not None
    wanted = len(talker.ids) + count
    for n in range(count):
        talker.socket.send(json.dumps({"data": {"n": n, "t": time.time(), "pad": "x" * 48_000}}))
        time.sleep(0.005)
    wait_until(lambda: all(len(m.ids) == wanted for m in [*others, talker]), what="the others' messages")


def test_redis_stopped_then_back_gives_503_and_1011_then_resumed_members_and_nothing_restarts(
    tmp_path: Path,
) -> None:
    with running(make_stack(tmp_path / "run", WEB_CONCURRENCY="2", REDIS_TIMEOUT="1")) as stack:
        handle = stack.handle
        assert handle is not None
        pids = {**handle.pids(), "workers": sorted(handle.worker_pids())}
        ledger = Ledger(stack.ws_url, stack.url, rooms=1, members_per_room=4, rate=20)
        ledger.start()
        time.sleep(1.0)
        handle.stop_service("redis")
        wait_until(
            lambda: all(m.closes[1011] for m in ledger.every_member()), what="every member closed with 1011"
        )
        with httpx2.Client(base_url=stack.url, timeout=10) as client:
            refused = client.post("/api/rooms/any/messages", json={"data": 1})
            ping = client.get("/api/ping")
        handle.start_service("redis")
        (publisher,) = ledger.publishers.values()
        accepted_before = len(publisher.accepted)
        wait_until(lambda: len(publisher.accepted) > accepted_before + 20, what="publishing again")
        ledger.stop()
        after = {**handle.pids(), "workers": sorted(handle.worker_pids())}
    assert refused.status_code == 503 and refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert (body["error"], body["layer"]) == ("backplane_unavailable", "app"), body
    assert ping.status_code == 200, "HTTP keeps serving"
    assert {k: v for k, v in after.items() if k != "redis"} == {k: v for k, v in pids.items() if k != "redis"}
    result = ledger.check()
    assert result["refused"].get("503 backplane_unavailable", 0) > 0, result
    assert (result["missing"], result["duplicates"]) == (0, 0), result
    assert all(m.connects >= 2 and m.ids[-1] == publisher.accepted[-1] for m in ledger.every_member())
