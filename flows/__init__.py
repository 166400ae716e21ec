"""Prefect flows composing tasks, and the one catalogue of them all."""
