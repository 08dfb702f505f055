"""canary: a router in front of OpenAI-compatible providers during a migration."""

__version__ = "0.1.0"
