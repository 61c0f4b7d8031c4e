"""`python -m zcache` is the `zcache` command."""

from zcache.cli import main

raise SystemExit(main())
