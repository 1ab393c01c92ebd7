"""Reaching a Ray cluster: the local head (started when none is configured) and this process's session."""
