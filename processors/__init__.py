"""The pure domain core: model, matching, key correlation, the state fold. No I/O here.

Nothing under ``processors/`` imports grpc, duckdb or streamlit (a test enforces it).
"""
