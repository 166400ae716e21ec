"""The preview-container agent: hydrate from a snapshot, then follow the project channel."""
