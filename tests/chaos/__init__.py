"""The chaos suite: seeded workloads under injected faults (`python -m pytest tests/chaos`)."""
