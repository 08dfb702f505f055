"""``python -m canary`` runs the CLI."""

from canary.cli import main

raise SystemExit(main())
