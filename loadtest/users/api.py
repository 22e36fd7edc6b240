"""The base HTTP user: FastHttpUser with explicit timeouts and verified HTTPS, and failures that name the
layer that answered."""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser

from loadtest.users.options import KNOBS


def describe_failure(response: Any) -> str:
    """One line naming who answered: the stack's errors are JSON with a `layer` field."""
    if not response.status_code:
        return f"no response: {getattr(response, 'error', None) or 'connection failed'}"
    try:
        body = response.json()
    except Exception:
        return f"{response.status_code} with a non-JSON body"
    if isinstance(body, dict) and "layer" in body:
        return f"{response.status_code} {body.get('error')} from {body['layer']}"
    return f"{response.status_code} {str(body)[:80]}"


class ApiUser(FastHttpUser):
    """FastHttpUser with explicit timeouts, longer than the stack's own, so its errors are what we record."""

    abstract = True
    network_timeout = KNOBS.locust_client_timeout
    connection_timeout = KNOBS.locust_client_timeout
    # Verify HTTPS (FastHttpUser's default skips it): system CAs, or SSL_CERT_FILE as the runner sets it.
    insecure = False

    def get_json(self, path: str, name: str, expect: str | None = None) -> dict[str, Any] | None:
        with self.client.get(path, name=name, catch_response=True) as response:
            return judge(response, expect)


def judge(response: Any, expect: str | None = None) -> dict[str, Any] | None:
    """Mark a catch_response response: 200 with a JSON object (holding key `expect`) or a failure."""
    if response.status_code != 200:
        response.failure(describe_failure(response))
        return None
    try:
        body = response.json()
    except Exception:
        response.failure("200 with a non-JSON body")
        return None
    if not isinstance(body, dict) or (expect is not None and expect not in body):
        response.failure(f"200 without {expect!r}: {str(body)[:80]}")
        return None
    response.success()
    return body
