"""Celery app, delivery tasks, worker-agent runtime and scheduled jobs (adapters over bus/)."""
