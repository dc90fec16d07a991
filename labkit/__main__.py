"""``python -m labkit COMMAND ...``: see ``labkit.cli``."""

from labkit.cli import main

raise SystemExit(main())
