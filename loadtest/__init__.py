"""Locust scenarios, load shapes and the runner behind `make loadtest` (see loadtest/README.md)."""
