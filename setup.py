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
        "bcrypt>=4.1,<6; platform_python_implementation != 'PyPy'",  # basicAuth's bcrypt hashes (pyca); apr1/SHA1 ours
        "bcrypt>=4.1,<4.3; platform_python_implementation == 'PyPy'",  # 4.2.0: the last wheel for PyPy 3.9
        "werkzeug>=3.0,<4",
        "requests>=2.31,<3",
        "python-jose[cryptography]>=3.4,<4",
        "cryptography>=42; platform_python_implementation != 'PyPy'",
        "cryptography>=42,<44; platform_python_implementation == 'PyPy'",  # 43: the last wheel for PyPy 3.9
        "ply>=3.11,<4",
        "watchdog>=4.0,<7",
        "PyYAML>=6.0,<7",
        "prometheus_client>=0.20,<1",
        "httptools>=0.6,<1",
        "google-re2>=1.1,<2; platform_python_implementation != 'PyPy'",  # router regexps in linear time (Go's syntax)
        # PyPy: the binding of Debian 12's libre2 (2022-06-01), built by scripts/install-pypy
        "google-re2==0.2.20220601; platform_python_implementation == 'PyPy'",
        # tracing (off unless OTEL_* asks): the SDK and its OTLP/HTTP exporter, imported only when on
        "opentelemetry-sdk>=1.25,<2",
        "opentelemetry-exporter-otlp-proto-http>=1.25,<2",
        "redis>=5.0,<9",  # rateLimit.redis and plugin.distributedRateLimit: token buckets shared through Redis
        "brotli>=1.1,<2",  # compress middleware's br encoding (Google's own binding, streaming flush; wheels)
        "zstandard>=0.22,<1; platform_python_implementation != 'PyPy'",  # compress's zstd (Traefik's first choice)
        "zstandard>=0.21,<0.22; platform_python_implementation == 'PyPy'",  # later CFFI backends need cffi 1.17
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.2",
            "hypothesis>=6.100",
            "flask>=3.0,<4",
            "gunicorn>=22",
            "websockets>=13,<18",  # a real WebSocket client and upstream for tests/test_websocket.py
            # the linters run under CPython only (scripts/test); mypy 2 needs Python 3.10
            "ruff>=0.17,<0.18; platform_python_implementation != 'PyPy'",  # rule sets change between minors
            "mypy>=2.4,<3; platform_python_implementation != 'PyPy'",
            "types-PyYAML>=6.0.12,<7; platform_python_implementation != 'PyPy'",
            "types-requests>=2.31,<3; platform_python_implementation != 'PyPy'",
        ],
    },
    entry_points={"console_scripts": ["gatekeeper=gatekeeper.cli.main:main"]},
)
