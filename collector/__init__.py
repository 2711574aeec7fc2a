"""coordstate: collector."""
