"""The public API: what `import gatekeeper` offers, and that importing it has no side effects."""
import subprocess
import sys

import gatekeeper


def test_all_names_resolve():
    for name in gatekeeper.__all__:
        assert getattr(gatekeeper, name) is not None, name


def test_errors_share_one_root():
    for name in ("ConfigError", "ExpressionError", "AuthError", "Unauthorized", "Forbidden", "BadGateway",
                 "GatewayTimeout"):
        assert issubclass(getattr(gatekeeper, name), gatekeeper.GatekeeperError), name


def test_import_patches_nothing_and_starts_no_thread():
    code = ("import threading, gatekeeper, gevent.monkey; from gatekeeper import JWTMiddleware, Gateway; "
            "assert not gevent.monkey.is_module_patched('socket'); "
            "assert threading.active_count() == 1, threading.enumerate(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
