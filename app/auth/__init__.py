"""API keys: how they are made, configured (by hash only) and checked on each request."""
