"""`python -m mcp_server` is `msgbus mcp`."""

from mcp_server.main import main

main()
