"""`python -m loadtest.sweep`: see loadtest/sweep/cli.py."""

import sys

from loadtest.sweep.cli import main

sys.exit(main())
