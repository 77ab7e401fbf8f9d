"""HTTP APIs: the REST API (/api/v1) and the execution API (/execution)."""
