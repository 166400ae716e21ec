"""The bad-input catalogue: one module per attacker-controlled input (index: README.md)."""
