#!/usr/bin/env bash
# Runs the bus on this machine: installs the project, starts local Redis and RabbitMQ when
# none is listening, then a delivery worker (extra args go to `msgbus worker`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e .
python3 -m bus.services up
exec msgbus worker "$@"
