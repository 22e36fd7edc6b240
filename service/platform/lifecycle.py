"""Process-wide lifecycle state shared by the worker class and the app."""

import threading

# The worker is leaving: it no longer accepts connections (or is about to). /readyz answers 503.
draining = threading.Event()
# Every HTTP response from now on carries `Connection: close`, so nginx drops the connection from its pool:
# set when a worker's exit begins, which for a max_requests recycle is before it stops accepting.
closing = threading.Event()
