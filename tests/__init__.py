"""canary's tests: a folder per layer of ``canary/``, plus ``e2e/`` and ``deploy/``."""
