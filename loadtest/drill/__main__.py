"""`python -m loadtest.drill`: see loadtest/drill/cli.py."""

import sys

from loadtest.drill.cli import main

sys.exit(main())
