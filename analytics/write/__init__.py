"""The write side: the writer thread, what it writes, the schema, the observer."""
