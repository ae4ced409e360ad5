"""Where the tests run: the repository, the artifacts folder, the services and the secret."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)  # every process log lands here, whichever test runs first
REDIS_URL = os.environ.get("MESSAGE_BUS_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("MESSAGE_BUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
TEST_SECRET = "test-secret-" + "x" * 20
