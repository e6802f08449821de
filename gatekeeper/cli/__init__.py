"""The command line: ``main`` (serve, check, token, --version) and ``serve`` (Settings, the serving process)."""
