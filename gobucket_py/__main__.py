"""``python -m gobucket_py``: the node runner (see :mod:`gobucket_py.cli`)."""

from .cli import main

raise SystemExit(main())
