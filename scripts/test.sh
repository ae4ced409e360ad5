#!/usr/bin/env bash
# The project's test command: installs the project, starts local Redis and RabbitMQ when
# none is listening (Debian packages, bound to 127.0.0.1), then runs the whole suite.
# Usage: ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check -e '.[test]'
else
  echo "warning: no pip for python3; using the installed packages as they are" >&2
fi
python3 -m msgbus services up
# Browser tests drive Debian's Chromium with its chromedriver.
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi
# The compose file is validated by the compose tool itself (no engine needed).
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  fi
fi
# The Claude Code end-to-end tests run the real CLI (npm), installed once into a cache
# folder (~/.cache/msgbus-test, or MSGBUS_CLAUDE_CODE_DIR); a no-op once installed.
python3 -m tests.support.claude_code >/dev/null \
  || echo "warning: Claude Code could not be installed; its end-to-end tests will fail" >&2
if [ "$#" -eq 0 ]; then  # the whole run also checks lint and formatting
  python3 -m ruff check bus workers mcp_server msgbus bench tests examples celeryconfig.py
  python3 -m ruff format --check bus workers mcp_server msgbus bench tests examples celeryconfig.py
  python3 -m mypy  # strict on bus/, workers/, mcp_server/, msgbus/ (pyproject.toml)
fi
# Tests spend most of their time waiting on processes they start, so they run on several
# pytest-xdist workers (MSGBUS_TEST_WORKERS, default 3; 0 runs them in this process).
# tests/conftest.py keeps a module's tests, and all of tests/cluster, on one worker.
set +e
python3 -m pytest -n "${MSGBUS_TEST_WORKERS:-3}" --dist loadgroup --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
