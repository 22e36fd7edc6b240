"""Process-wide lifecycle state shared by the worker class and the readiness route."""

import threading

draining = threading.Event()
