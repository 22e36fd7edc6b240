"""Facts the Locust side and the runner share. No locust or gevent imports: the runner imports it too."""

from typing import Final

CPU_LIMIT: Final = 90.0
"""A run during which a Locust process went above this CPU percentage is invalid (Locust warns at 90 too)."""

THRESHOLD_EXIT_CODE: Final = 3
"""The exit code of a run that violated a threshold (LOCUST_MAX_FAIL_RATIO or LOCUST_MAX_P95)."""
