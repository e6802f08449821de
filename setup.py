"""gatekeeper: a JWT-securing API gateway in Python (gevent + Werkzeug + python-jose + PLY)."""
from setuptools import find_packages, setup

setup(
    name="gatekeeper",
    version="0.1.0",
    description="A JWT-securing API gateway that reads Traefik and Kubernetes manifests from conf.d",
    packages=find_packages(include=["gatekeeper", "gatekeeper.*"]),
    package_data={"gatekeeper.ops": ["static/*.html", "static/*.js"]},  # the dashboard page
    python_requires=">=3.9",
    install_requires=[
        "gevent>=24.2,<27",
        "bcrypt>=4.1,<6",  # basicAuth's bcrypt htpasswd hashes (pyca, kept; passlib is not); apr1/SHA1 are ours
        "werkzeug>=3.0,<4",
        "requests>=2.31,<3",
        "python-jose[cryptography]>=3.4,<4",
        "cryptography>=42",
        "ply>=3.11,<4",
        "watchdog>=4.0,<7",
        "PyYAML>=6.0,<7",
        "prometheus_client>=0.20,<1",
        "httptools>=0.6,<1",
        "google-re2>=1.1,<2",  # router regexps in linear time (RE2 = Go's regexp syntax, as Traefik)
        # tracing (off unless OTEL_* asks): the SDK and its OTLP/HTTP exporter, imported only when on
        "opentelemetry-sdk>=1.25,<2",
        "opentelemetry-exporter-otlp-proto-http>=1.25,<2",
        "redis>=5.0,<9",  # rateLimit.redis and plugin.distributedRateLimit: token buckets shared through Redis
        "brotli>=1.1,<2",  # compress middleware's br encoding (Google's own binding, streaming flush; wheels)
        "zstandard>=0.22,<1",  # compress middleware's zstd encoding (Traefik's first choice; typed, wheels)
        # tracing (off unless OTEL_* asks): the SDK and its OTLP/HTTP exporter, imported only when on
        "opentelemetry-sdk>=1.25,<2",
        "opentelemetry-exporter-otlp-proto-http>=1.25,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.2",
            "hypothesis>=6.100",
            "flask>=3.0,<4",
            "gunicorn>=22",
            "websockets>=13,<18",  # a real WebSocket client and upstream for tests/test_websocket.py
            "ruff>=0.17,<0.18",  # rule sets change between minor versions: CI and laptops see the same findings
            "mypy>=2.4,<3",
            "types-PyYAML>=6.0.12,<7",
            "types-requests>=2.31,<3",
        ],
    },
    entry_points={"console_scripts": ["gatekeeper=gatekeeper.cli.main:main"]},
)
