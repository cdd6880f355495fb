"""Where playbooks come from: the bundled directory, or (later) Git providers."""
