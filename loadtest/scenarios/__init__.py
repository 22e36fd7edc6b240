"""One behaviour per file. Run one with `locust -f loadtest/scenarios/<name>_users.py`, debug one user with
`python -m loadtest.scenarios.<name>_users`, or all of them with `make loadtest SCENARIO=<name>`."""
