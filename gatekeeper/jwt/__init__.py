"""The JWT middleware: token places, key sources (local and remote), strict JWS, claims and forwarded headers,
the verified-token cache, ``JWTMiddleware`` for any WSGI app, and minting test tokens."""
