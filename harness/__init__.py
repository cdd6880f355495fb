"""Real parts for the tests and the benchmarks: fresh databases on the test servers, the service's entry
points as processes, a Git server. Not part of the service (not installed with it)."""
