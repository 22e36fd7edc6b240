"""The demonstration service: a FastAPI app and the gunicorn worker class that runs it."""
