"""The web console: HTML pages served by the API process, a client of its own /api/v1."""
