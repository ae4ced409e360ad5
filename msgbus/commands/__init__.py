"""The `msgbus` commands, one module per noun."""
