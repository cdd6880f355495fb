"""Where playbooks come from: the bundled directory, or a Git repository on a configured provider."""
