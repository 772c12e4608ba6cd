"""Customer identifiers prepared for ad-platform audiences (Google Customer Match, Meta)."""
