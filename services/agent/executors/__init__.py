"""Executors run one task attempt: ``command`` (any CLI through a template) and, for
Claude Code, ``claude``."""
