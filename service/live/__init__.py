"""Live output of runs: Redis streams written after commits (publish), read by the API (hub)."""
