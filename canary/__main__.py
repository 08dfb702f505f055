"""``python -m canary`` runs the CLI."""

from canary.tools.cli import main

raise SystemExit(main())
