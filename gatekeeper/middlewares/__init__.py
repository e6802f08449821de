"""Traefik's HTTP middlewares besides the JWT one: one module per family, each a factory that validates a
definition's options once and returns a wrapper (``wrap(app) -> app``). ``config/middlewares.py`` is the one
registry that names them; this wing knows nothing of manifests (it sees options and a :class:`~.base.Context`).
"""
