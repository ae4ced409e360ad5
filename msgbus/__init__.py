"""The `msgbus` application: the command line, the local services it can start (a
development Redis and RabbitMQ, or a multi-node stack) and the supervisor of `msgbus up`.

It is built on the library (bus/) and its adapters (workers/, mcp_server/); nothing in
them imports it.
"""
