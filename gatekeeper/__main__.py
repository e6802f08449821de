"""``python -m gatekeeper`` is the ``gatekeeper`` command."""
import sys

from gatekeeper.cli.main import main

if __name__ == "__main__":  # importing it (a doctest run does) must not run the command
    sys.exit(main())
