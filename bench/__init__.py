"""`msgbus bench`: the bus measured against raw Celery on the same broker, in one run."""
