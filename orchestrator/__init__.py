"""The service and its entry points: the HTTP API and the `velocity` CLI."""
