"""`python -m edgeqa` is the `edgeqa` command."""

from edgeqa.cli import main

raise SystemExit(main())
