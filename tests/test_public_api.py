"""The public API: `gatekeeper.__all__` is exactly what `import gatekeeper` offers, and importing it has no
side effects (no monkey-patching, no thread, no network: STYLE.md)."""
import json
import subprocess
import sys
import types

import pytest

import gatekeeper

LAZY = ("Gateway", "JWTMiddleware")  # loaded on first use by gatekeeper.__getattr__


def public_names(module: types.ModuleType) -> set:
    """Names a reader of ``module`` would take as its API: not private, not a submodule."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def test_all_is_sorted_without_duplicates():
    assert gatekeeper.__all__ == sorted(set(gatekeeper.__all__))


@pytest.mark.parametrize("name", gatekeeper.__all__)
def test_every_listed_name_resolves(name):
    value = getattr(gatekeeper, name)
    assert isinstance(value, type), name
    assert value.__doc__, f"{name} has no docstring"


def test_no_public_name_outside_all():
    eager = public_names(gatekeeper)
    assert eager | set(LAZY) == set(gatekeeper.__all__)


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from gatekeeper import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == gatekeeper.__all__


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Gatway'"):
        gatekeeper.Gatway  # noqa: B018 - the attribute access is the test


def test_errors_share_one_root():
    for name in ("ConfigError", "ExpressionError", "AuthError", "Unauthorized", "Forbidden", "BadGateway",
                 "GatewayTimeout"):
        assert issubclass(getattr(gatekeeper, name), gatekeeper.GatekeeperError), name


# In a fresh interpreter: the test process itself is monkey-patched by conftest.py and imports everything.
IMPORT_PROBE = """
import json, socket, sys, threading
connections = []
real_connect = socket.socket.connect
socket.socket.connect = lambda self, *a: connections.append(a) or real_connect(self, *a)
import gatekeeper, gevent.monkey
eager = sorted(sys.modules)
from gatekeeper import Gateway, JWTMiddleware
print(json.dumps({
    "patched": [name for name in ("socket", "thread", "time", "ssl", "os") if gevent.monkey.is_module_patched(name)],
    "threads": [thread.name for thread in threading.enumerate()],
    "connections": connections,
    "eager_gatekeeper_modules": [name for name in eager if name.startswith("gatekeeper")],
}))
"""


def test_import_patches_nothing_starts_no_thread_opens_no_connection():
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["patched"] == []
    assert seen["threads"] == ["MainThread"]
    assert seen["connections"] == []
    # import gatekeeper stays light: the errors only, the gateway and the JWT middleware load on first use
    assert seen["eager_gatekeeper_modules"] == ["gatekeeper", "gatekeeper.errors"]
