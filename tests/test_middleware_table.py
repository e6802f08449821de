"""docs/configuration.md's middleware tables match the code: every kind the registry builds has a row, every
kind it refuses has a row with the exact error text, and every Traefik kind a manifest may name is one or
the other."""
from __future__ import annotations

import re
from pathlib import Path

from gatekeeper.config.middlewares import FACTORIES, REFUSED
from gatekeeper.config.providers.file import MIDDLEWARE_KINDS, PLUGINS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
ROW = re.compile(r"^\| `([\w.]+)` \| (.*?) \|", re.MULTILINE)


def rows() -> dict:
    return dict(ROW.findall(DOC))


def test_every_built_kind_has_a_row():
    assert sorted(set(FACTORIES) - set(rows())) == []


def test_every_refused_kind_has_its_error_text():
    documented = rows()
    for kind, reason in REFUSED.items():
        assert documented.get(kind) == f"`{kind}: {reason}`", kind


def test_every_kind_a_manifest_may_name_is_built_or_refused():
    named = {k for k in MIDDLEWARE_KINDS if k != "plugin"} | {f"plugin.{p}" for p in PLUGINS}
    assert named == set(FACTORIES) | set(REFUSED)
