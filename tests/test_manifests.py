"""conf.d discovery and parsing: which files are read, in what order, and errors with lines."""
import os

import pytest

from gatekeeper.errors import ConfigError
from gatekeeper.manifests import is_manifest_name, parse_text, read_dir


@pytest.mark.parametrize("name, read", [
    ("api.yaml", True), ("api.yml", True), ("api.json", True), ("api.txt", False),
    (".hidden.yaml", False), ("api.yaml~", False), ("#api.yaml#", False), (".api.yaml.swp", False),
    ("api.yaml.swp", False), ("4913", False),
], ids=lambda v: str(v))
def test_which_names_are_manifests(name, read):
    assert is_manifest_name(name) is read


def test_read_dir_sorted_recursive_skips_hidden(tmp_path):
    (tmp_path / "b.yaml").write_text("http: {}\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "z.yml").write_text("http: {}\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("http: {}\n")
    (tmp_path / "c.json").write_text('{"http": {}}')
    (tmp_path / "notes.txt").write_text("nope")
    snap = read_dir(tmp_path)
    assert [f.file for f in snap.files] == ["a/z.yml", "b.yaml", "c.json"]
    assert all(f.error is None for f in snap.files)


def test_kubernetes_configmap_layout_read_through_links(tmp_path):
    data = tmp_path / "..2026_11_28_00_00_00.000"
    data.mkdir()
    (data / "routes.yaml").write_text("http: {}\n")
    os.symlink(data.name, tmp_path / "..data")
    os.symlink("..data/routes.yaml", tmp_path / "routes.yaml")
    snap = read_dir(tmp_path)
    assert [f.file for f in snap.files] == ["routes.yaml"]
    assert snap.files[0].documents[0].data == {"http": {}}


def test_multi_document_yaml_keeps_lines():
    docs = parse_text("a: 1\n---\nb:\n  c: 2\n", "x.yaml")
    assert [d.line for d in docs] == [1, 3]
    assert docs[1].data.line_of("b") == 3
    assert docs[1].data["b"].line_of("c") == 4


@pytest.mark.parametrize("text, line, words", [
    ("a: [1\n", 2, "not valid YAML"),
    ("a: 1\na: 2\n", 2, "duplicate key 'a'"),
    ("a:\n  b: 1\n   c: 2\n", 3, "not valid YAML"),
], ids=["unclosed-list", "duplicate-key", "bad-indent"])
def test_parse_errors_name_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as info:
        parse_text(text, "conf.d/x.yaml")
    assert info.value.file == "conf.d/x.yaml"
    assert info.value.line == line
    assert words in str(info.value)


def test_yaml_12_booleans_only():
    assert parse_text("a: on\nb: yes\nc: true\n", "x.yaml")[0].data == {"a": "on", "b": "yes", "c": True}


def test_unreadable_file_is_reported_not_raised(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "good.yaml").write_text("http: {}\n")
    snap = read_dir(tmp_path)
    assert "not UTF-8" in str(snap.files[0].error)
    assert snap.files[1].error is None


def test_missing_directory_raises(tmp_path):
    with pytest.raises(OSError):
        read_dir(tmp_path / "nope")
