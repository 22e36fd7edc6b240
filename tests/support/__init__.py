"""Helpers the test tiers share: stacks (stack.py, docker.py), the OpenAPI contract and nginx's refusals
(contract.py), wrk load through nginx (wrk.py). A tier's conftest.py holds only its fixtures."""
