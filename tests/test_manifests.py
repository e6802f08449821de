"""conf.d discovery and parsing: which files are read, in what order, and errors with lines."""
import gc
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.manifests import LOADERS, MAX_FILE_BYTES, is_manifest_name, parse_text, read_dir
from gatekeeper.errors import ConfigError


@pytest.mark.parametrize("name, read", [
    ("api.yaml", True), ("api.yml", True), ("api.json", True), ("api.txt", False),
    (".hidden.yaml", False), ("api.yaml~", False), ("#api.yaml#", False), (".api.yaml.swp", False),
    ("api.yaml.swp", False), ("4913", False),
], ids=str)
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


# --- bounds: a file cannot stall the reload or exhaust memory --------------------------------------------

def alias_bomb(levels: int) -> str:
    """"Billion laughs": each level an anchor holding nine aliases of the one before (9**levels nodes)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "http:\n  routers:\n" + "".join(f"    {line}\n" for line in lines)


@pytest.mark.parametrize("text, line, words", [
    (alias_bomb(6), 8, "aliases expand to more than 100,000 nodes"),
    ("http: &a\n  routers: [*a]\n", 2, "refers to a node that contains it"),
    ("http: " + "[" * 1000 + "]" * 1000 + "\n", 1, "nested more than 100 levels deep"),
], ids=["billion-laughs", "recursive-alias", "deep-nesting"])
def test_hostile_yaml_is_refused_with_file_and_line(tmp_path, text, line, words):
    """Before: the bomb took seconds and hundreds of MB once walked; the others raised RecursionError."""
    (tmp_path / "bomb.yaml").write_text(text)
    started = time.perf_counter()
    result = read_dir(tmp_path).files[0]
    assert time.perf_counter() - started < 1.0
    assert (result.error.file, result.error.line, result.documents) == ("bomb.yaml", line, ())
    assert words in result.error.reason


def test_aliases_within_the_bound_still_work():
    docs = parse_text("common: &mw [auth, strip]\nhttp:\n  routers:\n    r: {middlewares: *mw}\n", "x.yaml")
    assert docs[0].data["http"]["routers"]["r"]["middlewares"] == ["auth", "strip"]


def test_oversized_file_is_refused_without_reading_it_all(tmp_path):
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    (tmp_path / "ok.yaml").write_text("http: {}\n")
    big, ok = read_dir(tmp_path).files
    assert "larger than 1024 KiB" in big.error.reason and big.error.file == "big.yaml"
    assert ok.error is None


@pytest.mark.parametrize("links, problems", [
    ({"sub/up": ".."}, ["sub/up"]),
    ({"sub/up": "..", "sub/up2": "..", "sub/here": "."}, ["sub/here", "sub/up", "sub/up2"]),
    ({"team": "shared", "again": "shared"}, ["again", "team"]),
], ids=["loop-to-root", "three-loops", "two-links-to-one-folder"])
def test_symlinked_folders_are_walked_once(tmp_path, links, problems):
    """Before: ``sub/up -> ..`` read a.yaml 41 times (every copy a duplicate); each more link doubled that."""
    (tmp_path / "a.yaml").write_text("http: {}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "b.yaml").write_text("http: {}\n")
    for link, target in links.items():
        os.symlink(target, tmp_path / link)
    snap = read_dir(tmp_path)
    assert [f.file for f in snap.files] == ["a.yaml", "shared/b.yaml"]
    assert [p.file for p in snap.problems] == problems
    assert all("not followed" in p.reason for p in snap.problems)


# --- libyaml's events feeding the bounded composer, and the pure-Python fallback ----------------------------

def outcome(text, loader_class):
    """What a file gives with one loader: documents with their lines and key lines, or the error's line."""
    try:
        return [(d.line, d.data, d.data.key_lines) for d in parse_text(text, "x.yaml", loader_class)]
    except ConfigError as err:
        return ("error", err.file, err.line, err.reason.split(":")[0])


@pytest.mark.parametrize("text", [
    "http:\n  routers:\n    r:\n      rule: Host(`a`)\n      service: s\n",
    '{"http": {"routers": {"r": {"rule": "Path(`/`)", "priority": 3}}}}',
    "a: on\nb: yes\nc: TRUE\nd: 0x1F\ne: 012\nf: ~\n",
    "x: &a [1]\ny: *a\n<<: {m: 1}\n",
    "a: 1\n---\nb:\n  c: 2\n...\n---\nd: 3\n",
    "a: |\n  x\n  y\nb: >-\n  z\n",
    "a: [1\n", "a: {b: 1\n", "a:\n  b: 1\n   c: 2\n", "- a\nb: 1\n", "a: 1\na: 2\n", "a: *nope\n",
    "\ta: 1\n", "? [1]\n: 2\n", "a: !!python/object:os.system x\n", alias_bomb(6), "http: &a\n  r: [*a]\n",
    "[" * 150 + "]" * 150, "[" * 1200, "a: &a [" + ",".join(["x"] * 1000) + "]\nb: [" + ",".join(["*a"] * 200) + "]\n",
], ids=["yaml", "json", "yaml-1.2-scalars", "aliases-merge", "multi-document", "block-scalars",
        "unclosed-list", "unclosed-map", "bad-indent", "sequence-then-map", "duplicate-key", "undefined-alias",
        "tab", "unhashable-key", "python-tag", "billion-laughs", "recursive-alias", "deep-150", "deep-past-libyaml",
        "many-aliases"])
def test_libyaml_and_pure_python_loaders_agree(text):
    """Both loaders give the same documents, lines and error lines (libyaml words some syntax errors apart)."""
    assert len(LOADERS) == 2, "PyYAML here was built without libyaml: the fast path is not tested"
    fast, pure = LOADERS
    assert outcome(text, fast) == outcome(text, pure)


def test_without_libyaml_the_pure_python_loader_reads(tmp_path):
    """PyYAML built without libyaml (``yaml._yaml`` missing): the module imports and reads with Python alone."""
    (tmp_path / "a.yaml").write_text("http:\n  routers:\n    r: {rule: Host(`a`)}\nx: [1\n")
    (tmp_path / "b.yaml").write_text("b: on\n---\nc:\n  d: 2\n")
    script = (
        "import sys; sys.modules['yaml._yaml'] = None\n"
        "from gatekeeper.config.manifests import LOADERS, read_dir\n"
        "files = read_dir(sys.argv[1]).files\n"
        "print([l.__name__ for l in LOADERS], files[0].error.line, [d.data for d in files[1].documents],\n"
        "      files[1].documents[1].data['c'].line_of('d'))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "['_LineLoader'] 5 [{'b': 'on'}, {'c': {'d': 2}}] 4"


@pytest.mark.parametrize("text, expanded", [
    ('a: {b: \'{{ env "GK_P16C_VALUE" }}\'}\n', "secret-value"),
    ('a: {b: "\\x7b\\x7b env \\"GK_P16C_VALUE\\" }}"}\n', "secret-value"),
    ('a: {b: "\\u007B{ env \\"GK_P16C_VALUE\\" }}"}\n', "secret-value"),
    ('a: {b: "{\\\n  { env \\"GK_P16C_VALUE\\" }}"}\n', "secret-value"),
    ("a: {b: '{ { env \"GK_P16C_VALUE\" }}'}\n", '{ { env "GK_P16C_VALUE" }}'),
    ("a: {b: plain}\n", "plain"),
], ids=["template", "hex-escapes", "unicode-escape", "escaped-line-break", "not-a-template", "no-template"])
def test_templates_are_expanded_however_spelled(monkeypatch, text, expanded):
    """A file whose text has no ``{{`` is not walked by expand_env, unless escapes could spell one."""
    from gatekeeper.config.providers.fields import expand_env
    monkeypatch.setenv("GK_P16C_VALUE", "secret-value")
    for loader_class in LOADERS:
        data = parse_text(text, "x.yaml", loader_class)[0].data
        out = expand_env(data)
        assert out["a"]["b"] == expanded
        assert (out is data) is (expanded != "secret-value")
        assert out["a"].line_of("b") == 1


def test_reading_conf_d_runs_no_garbage_collection(tmp_path):
    """Before: the cyclic collector ran during a read (a quarter of a 10,000-router read); after: paused, then back."""
    for n in range(10):
        routers = "".join(f"    r{n}x{i}: {{rule: 'Host(`h{i}`)', service: s}}\n" for i in range(100))
        (tmp_path / f"f{n}.yaml").write_text("http:\n  routers:\n" + routers)
    (tmp_path / "z-broken.yaml").write_text("a: [1\n")
    collections = []
    gc.collect()  # a fresh count, so a collection due from this test's own allocations is not counted
    gc.callbacks.append(lambda phase, info: collections.append(info) if phase == "start" else None)
    try:
        snap = read_dir(tmp_path)
    finally:
        gc.callbacks.pop()
    # at most the one collection due when the collector is back on (before: one every 700 allocations)
    assert [info["generation"] for info in collections] in ([], [0]) and gc.isenabled()
    assert len(list(snap.documents)) == 10 and snap.files[-1].error.line == 2


def test_compiling_runs_no_garbage_collection_and_the_collector_comes_back(tmp_path):
    """Compile pauses the collector too (see docs/performance.md); an error inside, or a collector already
    off, leaves it as it was."""
    from gatekeeper.config.compile import compile_config
    from gatekeeper.config.manifests import paused_gc
    routers = "".join(f"    r{i}: {{rule: 'Host(`h{i}.test`) && Path(`/a`)', service: s{i}}}\n" for i in range(300))
    services = "".join(f"    s{i}: {{loadBalancer: {{servers: [{{url: 'http://127.0.0.1:9'}}]}}}}\n"
                       for i in range(300))
    (tmp_path / "a.yaml").write_text("http:\n  routers:\n" + routers + "  services:\n" + services)
    snap = read_dir(tmp_path)
    collections = []
    gc.collect()
    gc.callbacks.append(lambda phase, info: collections.append(info) if phase == "start" else None)
    try:
        config = compile_config(snap)
    finally:
        gc.callbacks.pop()
    assert len(config.routers) == 300 and not config.errors
    assert [info["generation"] for info in collections] in ([], [0]) and gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("a compile that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()



def yaml_of(tree, indent=0):
    """A tree of ("flow-list" | "flow-map" | "block-map", children) and scalars as YAML text."""
    if isinstance(tree, str):
        return tree
    kind, items = tree
    if kind == "flow-list":
        return "[" + ", ".join(yaml_of(t) for t in items) + "]"
    if kind == "flow-map":
        return "{" + ", ".join(f"k{i}: {yaml_of(t)}" for i, t in enumerate(items)) + "}"
    return "".join(f"\n{' ' * indent}k{i}: " + yaml_of(t, indent + 2) for i, t in enumerate(items))


def wrapped(tree, depth):
    for _ in range(depth):
        tree = ("flow-list", [tree])
    return tree


FLOW = st.recursive(st.sampled_from(("x", "1", "'y'")), lambda child: st.tuples(
    st.sampled_from(("flow-list", "flow-map")), st.lists(child, min_size=1, max_size=3)), max_leaves=20)
DEEP = st.builds(wrapped, FLOW, st.integers(80, 110))   # some past the bound, some not, some at it
BLOCK = st.recursive(st.one_of(FLOW, DEEP), lambda child: st.tuples(
    st.just("block-map"), st.lists(child, min_size=1, max_size=3)), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(tree=st.tuples(st.just("block-map"), st.lists(BLOCK, min_size=1, max_size=4)))
def test_a_document_without_aliases_is_bounded_as_one_with_them(tree):
    """check_depth (a text without ``*``) refuses what check_graph refuses, at the same line, and nothing else."""
    import yaml

    from gatekeeper.config.yaml_bounds import check_depth, check_graph

    text = "top:" + yaml_of(tree, 2) + "\n"
    assert "*" not in text
    loader = yaml.CSafeLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    outcomes = []
    for check in (check_graph, check_depth):
        try:
            check(node)
            outcomes.append(None)
        except yaml.YAMLError as exc:
            outcomes.append((str(exc), exc.problem_mark.line))
    assert outcomes[0] == outcomes[1]


SCALARS = st.sampled_from(("x", "'q'", '"d"', "1", "-2", "0x1F", "1.5", ".inf", "true", "on", "~", "null",
                           "2026-11-29", "=", "|\n    block", "!!str 3", "[]", "{}", "[1, a]", "{k: v}"))
KEYS = st.sampled_from(("a", "b", "'a'", "1", "true", "~", "=", "2026-11-29", "<<", "? [1]"))


def block_yaml(tree, indent=0):
    """A tree of (key, value) lists and scalars as block YAML (merge, value and odd keys included)."""
    if isinstance(tree, str):
        return " " + tree
    pad = " " * indent
    lines = []
    for key, value in tree:
        if key == "? [1]":
            lines.append(f"\n{pad}? [1]\n{pad}:{block_yaml(value, indent + 2)}")
        else:
            lines.append(f"\n{pad}{key}:{block_yaml(value, indent + 2)}")
    return "".join(lines) or " {}"


BLOCKS = st.recursive(SCALARS, lambda child: st.lists(st.tuples(KEYS, child), min_size=1, max_size=3), max_leaves=12)


def built(value):
    """A constructed value with what a Mapping remembers (lines, key lines, the template flag), recursively."""
    if isinstance(value, dict):
        return ("map", getattr(value, "line", None), getattr(value, "key_lines", None),
                getattr(value, "templated", None), [(k, built(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [built(v) for v in value])
    return (type(value).__name__, value)


def read_with(text, loader_class):
    try:
        return [(d.index, d.line, built(d.data)) for d in parse_text(text, "x.yaml", loader_class)]
    except ConfigError as err:
        return ("error", err.line, err.reason)


@settings(max_examples=200, deadline=None)
@given(documents=st.lists(st.one_of(BLOCKS.filter(lambda t: not isinstance(t, str)), SCALARS), min_size=1,
                          max_size=2))
def test_the_tree_construction_builds_what_construct_object_builds(documents):
    """libyaml's documents without aliases are built directly (Manifests._tree_object): the same values, the
    same lines and key lines, the same errors as PyYAML's construct_object walk (the pure-Python loader)."""
    assert len(LOADERS) == 2
    text = "---\n".join("top:" + block_yaml(d, 2) + "\n" for d in documents)
    fast, pure = LOADERS
    first = read_with(text, fast)
    if first[0] == "error":  # libyaml words some syntax errors apart: the lines agree
        assert read_with(text, pure)[:2] == first[:2]
    else:
        assert first == read_with(text, pure)
