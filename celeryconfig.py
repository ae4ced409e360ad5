"""Celery settings built from bus.settings (MESSAGE_BUS_* environment variables).

`celery -A workers.app worker` uses these through workers/app.py; they are exported here
too so `celery --config celeryconfig` and operators can see the whole configuration.
"""

from bus.settings import Settings
from bus.topology import celery_config

globals().update(celery_config(Settings()))
