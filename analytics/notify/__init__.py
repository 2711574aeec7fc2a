"""Anomalies leave the database: alert targets (Alertmanager, OTLP logs) and reconciliation
webhooks, each delivered at least once from the durable state in the database."""
