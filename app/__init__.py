"""coordstate: app."""
