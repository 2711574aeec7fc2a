"""The read side: the query API, its sandbox, the client, named queries, exports."""
