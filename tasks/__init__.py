"""Prefect tasks: one retryable step each, testable through `.fn`."""
