"""Model-based tests: generated inputs checked against plain Python models of the contract."""
