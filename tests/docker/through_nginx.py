"""The local tier's through-nginx tests that hold for any runtime: a docker tier module runs them against
its own stack with `from tests.docker.through_nginx import *` (its `one_worker_stack` fixture decides which).
Not a test module itself, so pytest collects these only where they are imported."""

from tests.stack.test_through_nginx import (
    test_200_slow_requests_share_one_worker_concurrently,
    test_app_timeout_is_the_apps_json_504,
    test_blocking_route_stalls_its_worker_and_slow_route_does_not,
    test_malformed_json_is_a_json_422_from_the_app,
    test_oversize_body_is_nginxs_json_413,
    test_ping_through_nginx,
    test_request_id_reaches_the_app_and_comes_back,
    test_stream_chunks_arrive_one_by_one,
    test_unknown_route_is_json,
    test_ws_echo_text_and_binary_through_nginx,
    test_ws_oversize_message_closes_with_1009,
    test_ws_ticker_pushes_through_nginx,
)

__all__ = [
    "test_200_slow_requests_share_one_worker_concurrently",
    "test_app_timeout_is_the_apps_json_504",
    "test_blocking_route_stalls_its_worker_and_slow_route_does_not",
    "test_malformed_json_is_a_json_422_from_the_app",
    "test_oversize_body_is_nginxs_json_413",
    "test_ping_through_nginx",
    "test_request_id_reaches_the_app_and_comes_back",
    "test_stream_chunks_arrive_one_by_one",
    "test_unknown_route_is_json",
    "test_ws_echo_text_and_binary_through_nginx",
    "test_ws_oversize_message_closes_with_1009",
    "test_ws_ticker_pushes_through_nginx",
]
