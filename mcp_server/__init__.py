"""MCP server (stdio and streamable HTTP) over bus/."""
