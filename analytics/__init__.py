"""coordstate: analytics."""
