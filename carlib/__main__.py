"""``python -m carlib`` is the ``carlib`` command."""

from carlib.cli import main

raise SystemExit(main())
