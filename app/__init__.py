"""Real-time customer segment scoring service."""
