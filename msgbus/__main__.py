"""`python -m msgbus ...` is `msgbus ...`."""

from msgbus.cli import main

main()
