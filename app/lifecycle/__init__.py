"""Model lifecycle: the registry of versions, hot activation and rollback, shadow scoring."""
