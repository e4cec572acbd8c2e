"""``python -m agent`` is the ``container-agent`` command."""

from agent.cli import main

raise SystemExit(main())
