"""What the receivers and the query API share: HTTP listener plumbing and self-telemetry."""
