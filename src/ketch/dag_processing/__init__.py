"""The DAG processor: finds DAG files, parses them in child processes, stores the result."""
