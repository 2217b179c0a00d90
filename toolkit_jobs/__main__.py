"""`python -m toolkit_jobs`: the `toolkit-jobs` command."""

from __future__ import annotations

from toolkit_jobs.cli import main

raise SystemExit(main())
