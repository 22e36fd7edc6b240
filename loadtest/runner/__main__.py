"""`python -m loadtest.runner`: see loadtest/runner/cli.py."""

import sys

from loadtest.runner.cli import main

sys.exit(main())
