"""The helpers in tests/support assert as test modules do: pytest rewrites their asserts too, so a failure
shows the values compared."""

import pytest

pytest.register_assert_rewrite("tests.support")
