"""`python -m agent`: the container's entry point."""

from agent.main import main

raise SystemExit(main())
