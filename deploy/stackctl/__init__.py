"""stackctl: render, start, stop and inspect the blueprint stack. `python -m deploy.stackctl --help`."""
