"""A YAML syntax error explained (issue 19): file, line, column, the line with a caret under the column, and a
hint for the common slips; with both loaders (libyaml's and the pure-Python one), and as ``check`` prints it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatekeeper.config.manifests import LOADERS, parse_text
from gatekeeper.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HEAD = "http:\n  routers:\n    api:\n      rule: Path(`/`)\n"


def message(text: str, loader: type) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_text(text, "bad.yaml", loader)
    return str(caught.value)


@pytest.mark.parametrize("loader", LOADERS, ids=[cls.__name__ for cls in LOADERS])
@pytest.mark.parametrize("text, where, caret, hint", [
    (HEAD + "     service: web\n", "bad.yaml:5:", "     5 |      service: web\n       |      ^",
     "line 5 is indented 5 spaces, but the keys under line 3 start at 6 (line 4)"),
    (HEAD + "        service: web\n", "bad.yaml:5:", "     5 |         service: web\n       |                ^",
     "line 5 is indented deeper (8 spaces) than line 4 (6), which already has a value"),
    (HEAD + "   services:\n    web: {}\n", "bad.yaml:5:", "     5 |    services:\n       |    ^",
     "line 5 is indented 3 spaces, but the keys under line 2 start at 4 (line 3)"),
    ("http:\n  routers:\n\tapi:\n      rule: x\n", "bad.yaml:3:", "     3 |  api:\n       | ^",
     "line 3 has a tab character: YAML indents with spaces only"),
    ("http:\n  routers:\n    api:\n      rule:Path(`/`)\n      service: web\n", "bad.yaml:5:", "",
     'line 4: "rule:" has no space after the colon, so YAML reads the line as one string: write "rule: ..."'),
    (HEAD + "      service:web\n      priority: 3\n", "bad.yaml:6:", "     6 |       priority: 3\n       |       ^",
     'line 5: "service:" has no space after the colon'),
], ids=["key-shallower", "key-deeper", "between-levels", "tab", "no-space-then-key", "no-space-before-key"])
def test_yaml_error_shows_line_column_caret_and_hint(loader: type, text: str, where: str, caret: str,
                                                     hint: str) -> None:
    shown = message(text, loader)
    assert shown.startswith(where + " not valid YAML: "), shown
    assert "(line " in shown and ", column " in shown.splitlines()[0], shown
    assert caret in shown, shown
    assert "  hint: " + hint in shown, shown


@pytest.mark.parametrize("loader", LOADERS, ids=[cls.__name__ for cls in LOADERS])
@pytest.mark.parametrize("text, secret", [
    ("http:\n  middlewares:\n    a:\n      plugin:\n        jwt:\n          claims: x\n"
     "           signingSecret: s3cr3t-value: oops\n", "s3cr3t-value"),
    ("apiVersion: v1\nkind: Secret\nmetadata: {name: jwt}\nstringData:\n  key: hunter2hunter2\n"
     "   other: hunter3hunter3\n", "hunter3hunter3"),
    ("http:\n  services:\n    s:\n      loadBalancer:\n        servers:\n"
     "          - url: http://u:pa55w0rd@h/ weight: 1\n", "pa55w0rd"),
    ('{"http": {"middlewares": {"a": {"plugin": {"jwt": {"signingSecret": "hunter2x" "oops"}}}}}}\n', "hunter2x"),
], ids=["secret-option", "kubernetes-secret", "url-credentials", "json-one-line"])
def test_the_line_shown_never_carries_a_credential(loader: type, text: str, secret: str) -> None:
    shown = message(text, loader)
    assert "^" in shown and "***" in shown, shown
    assert secret not in shown


def test_a_clean_file_still_parses() -> None:
    for loader in LOADERS:
        (doc,) = parse_text(HEAD + "      service: web\n", "ok.yaml", loader)
        assert doc.data["http"]["routers"]["api"]["service"] == "web"


def test_check_prints_the_explanation_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(HEAD + "     service: web\n")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert ("bad.yaml:5: not valid YAML: did not find expected key (line 5, column 6)\n"
            "     5 |      service: web\n"
            "       |      ^\n"
            "  hint: line 5 is indented 5 spaces") in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
