"""ansible-runner-service: run Ansible playbooks on demand over a REST API."""
