#!/usr/bin/env bash
# Runs the bus on this machine: installs the project, then `msgbus up` (local Redis and
# RabbitMQ when none is listening, a delivery worker, beat, the MCP HTTP server with the
# dashboard, and Flower). Ctrl-C stops everything. Extra args go to `msgbus up`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e .
exec python3 -m msgbus up "$@"
