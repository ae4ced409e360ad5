"""`python -m msgbus ...` is `msgbus ...`."""

from msgbus.cli import main

if __name__ == "__main__":  # not when a spawned server process imports it
    main()
