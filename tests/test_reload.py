"""Live reload: every kind of edit to conf.d ends in the right configuration, waited for on the generation
counter (never a bare sleep), in-process and in a real ``python -m gatekeeper serve``.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import gevent
import pytest
import requests
from conftest import wait_until

from gatekeeper.app import Gateway
from gatekeeper.config.reload import ConfigLoader
from gatekeeper.config.table import Config
from gatekeeper.config.watch import Watcher, is_editor_leftover
from gatekeeper.ops.echo import named_echo_app

OLD, NEW = "http://127.0.0.1:1/old", "http://127.0.0.1:1/new"
TIMEOUT = 5.0


def manifest(url: str, router: str = "api", path: str = "/api") -> str:
    """One router with its own service, in Traefik file-provider YAML."""
    return (f"http:\n  routers:\n    {router}:\n      rule: PathPrefix(`{path}`)\n      service: {router}-svc\n"
            f"  services:\n    {router}-svc:\n      loadBalancer:\n        servers:\n          - url: {url}\n")


def served(config: Config) -> Dict[str, str]:
    """router name -> the upstream URL its service sends to."""
    return {r.name.split("@")[0]: config.services[r.definition.service].definition.servers[0].url
            for r in config.routers}


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[ConfigLoader]:
    """conf.d holding routes.yaml (api -> OLD) and extra.yaml (extra -> OLD), loaded and watched."""
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(manifest(OLD))
    (root / "extra.yaml").write_text(manifest(OLD, "extra", "/extra"))
    loader = ConfigLoader(root)
    loader.load()
    loader.watch()
    yield loader
    loader.stop()


def wait_for_swap(loader: ConfigLoader, before: int) -> Config:
    assert loader.wait_for_generation(before + 1, TIMEOUT), f"no reload after generation {before}"
    assert loader.config is not None
    return loader.config


# -- edits, as editors and tools make them ---------------------------------------------------------
def add_file(root: Path) -> None:
    (root / "more.yaml").write_text(manifest(NEW, "more", "/more"))


def edit_in_place(root: Path) -> None:
    (root / "routes.yaml").write_text(manifest(NEW))


def delete_file(root: Path) -> None:
    (root / "extra.yaml").unlink()


def atomic_rename_save(root: Path) -> None:
    tmp = root / ".routes.yaml.tmp-1234"
    tmp.write_text(manifest(NEW))
    os.replace(tmp, root / "routes.yaml")


def truncate_then_write(root: Path) -> None:
    with open(root / "routes.yaml", "r+") as handle:
        handle.truncate(0)
        handle.flush()
        os.fsync(handle.fileno())
        gevent.sleep(0.02)  # the editor's pause between truncating and writing (shorter than the debounce)
        handle.write(manifest(NEW))


def vim_save(root: Path) -> None:
    """vim's default save: swap file, the ``4913`` probe, rename to a ``~`` backup, write, drop the backup."""
    swap = root / ".routes.yaml.swp"
    swap.write_bytes(b"b0VIM 9.0\0" * 100)
    probe = root / "4913"
    probe.write_text("")
    probe.unlink()
    os.rename(root / "routes.yaml", root / "routes.yaml~")
    (root / "routes.yaml").write_text(manifest(NEW))
    (root / "routes.yaml~").unlink()
    swap.unlink()


def new_subdirectory(root: Path) -> None:
    (root / "team" / "apps").mkdir(parents=True)
    (root / "team" / "apps" / "more.yaml").write_text(manifest(NEW, "more", "/more"))


BOTH_OLD = {"api": OLD, "extra": OLD}


@pytest.mark.parametrize("edit, expected", [
    (add_file, {**BOTH_OLD, "more": NEW}),
    (edit_in_place, {"api": NEW, "extra": OLD}),
    (delete_file, {"api": OLD}),
    (atomic_rename_save, {"api": NEW, "extra": OLD}),
    (truncate_then_write, {"api": NEW, "extra": OLD}),
    (vim_save, {"api": NEW, "extra": OLD}),
    (new_subdirectory, {**BOTH_OLD, "more": NEW}),
], ids=lambda v: v.__name__ if callable(v) else "")
def test_edit_ends_in_final_configuration(watched, edit, expected):
    before = watched.generation
    edit(watched.conf_d)
    config = wait_for_swap(watched, before)
    assert wait_until(lambda: served(watched.config) == expected, TIMEOUT), served(watched.config)
    assert not watched.config.errors
    assert config.generation > before


@pytest.mark.parametrize("edit", [
    pytest.param(lambda root: os.utime(root / "routes.yaml"), id="touch"),
    pytest.param(lambda root: (root / "routes.yaml").write_text(manifest(OLD)), id="rewrite-same-bytes"),
    pytest.param(lambda root: (root / "notes.txt").write_text("not a manifest"), id="non-manifest-file"),
])
def test_unchanged_bytes_cause_no_swap(watched, edit):
    before = watched.generation
    edit(watched.conf_d)
    assert wait_until(lambda: watched.last_reload.trigger == "watch", TIMEOUT), "the watcher did not reload"
    assert watched.last_reload.swapped is False
    assert watched.generation == before


def test_partial_write_serves_last_good_then_final(watched):
    """A reload that catches a half-written file keeps the last good version; the finished write wins."""
    text = manifest(NEW)
    path = watched.conf_d / "routes.yaml"
    with open(path, "w") as handle:
        handle.write(text[: text.index("servers:") + 20] + "\n  - [")
        handle.flush()
        during = wait_for_swap(watched, watched.generation)
        assert served(during) == BOTH_OLD
        assert any("routes.yaml" in str(e) and "last good" in str(e) for e in during.errors)
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    final = wait_for_swap(watched, during.generation)
    assert served(final) == {"api": NEW, "extra": OLD}
    assert not final.errors


def test_broken_file_keeps_serving_last_good(conf_d, wsgi_server):
    upstream = wsgi_server(named_echo_app("a"))
    conf_d("routes.yaml", manifest(upstream.url))
    gateway = Gateway(conf_d.root)
    gateway.loader.watch()
    server = wsgi_server(gateway)
    try:
        before = gateway.loader.generation
        (conf_d.root / "routes.yaml").write_text("http:\n  routers: [unclosed\n")
        config = wait_for_swap(gateway.loader, before)
        assert [str(e) for e in config.errors] and "routes.yaml" in str(config.errors[0])
        answer = requests.get(server.url + "/api/x", timeout=5)
        assert (answer.status_code, answer.json()["server"]) == (200, "a")
    finally:
        gateway.loader.stop()


def test_startup_with_broken_conf_d_serves_what_is_valid(conf_d, wsgi_server):
    upstream = wsgi_server(named_echo_app("a"))
    conf_d("good.yaml", manifest(upstream.url))
    conf_d("bad.yaml", "http:\n  routers:\n    x: {rule: Path(`/x`\n")
    conf_d("bad-rule.yaml", manifest(upstream.url, "odd", "/odd").replace("PathPrefix(`/odd`)", "PathPrefix(/odd"))
    gateway = Gateway(conf_d.root)
    server = wsgi_server(gateway)
    assert served(gateway.config) == {"api": upstream.url}
    assert {e.file for e in gateway.config.errors} == {"bad.yaml", "bad-rule.yaml"}
    assert requests.get(server.url + "/api", timeout=5).json()["server"] == "a"


# -- Kubernetes ConfigMap volume ------------------------------------------------------------------
def publish_configmap(root: Path, files: Dict[str, str], stamp: str) -> None:
    """What the kubelet does: a new timestamped dir, ``..data_tmp`` -> it, renamed over ``..data``,
    visible names linked through ``..data``, then the old timestamped dir removed."""
    current = root / f"..2026_01_02_03_04_{stamp}.123456789"
    current.mkdir()
    for name, text in files.items():
        (current / name).write_text(text)
    os.symlink(current.name, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)
    for entry in root.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
        elif entry.name.startswith("..2026") and entry != current:
            shutil.rmtree(entry)


def test_kubernetes_configmap_data_swap(tmp_path):
    root = tmp_path / "configmap"
    root.mkdir()
    publish_configmap(root, {"routes.yaml": manifest(OLD)}, "01")
    loader = ConfigLoader(root)
    loader.load()
    loader.watch()
    try:
        assert served(loader.config) == {"api": OLD}
        steps = [
            ({"routes.yaml": manifest(NEW)}, {"api": NEW}),
            ({"routes.yaml": manifest(NEW), "extra.yaml": manifest(OLD, "extra", "/extra")},
             {"api": NEW, "extra": OLD}),
            ({"extra.yaml": manifest(OLD, "extra", "/extra")}, {"extra": OLD}),
        ]
        for number, (files, expected) in enumerate(steps, start=2):
            before = loader.generation
            publish_configmap(root, files, f"{number:02d}")
            wait_for_swap(loader, before)
            assert wait_until(lambda want=expected: served(loader.config) == want, TIMEOUT), served(loader.config)
            assert not loader.config.errors
    finally:
        loader.stop()


# -- the watcher itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, leftover", [
    ("routes.yaml", False), ("..data", False), ("..2026_01_02", False), ("team", False),
    ("4913", True), (".routes.yaml.swp", True), (".routes.yaml.swx", True), ("routes.yaml~", True),
    (".#routes.yaml", True), ("#routes.yaml#", True),
])
def test_editor_leftovers(name, leftover):
    assert is_editor_leftover(f"/etc/conf.d/{name}") is leftover


def test_polling_observer_reloads(watched, monkeypatch):
    watched.stop()
    monkeypatch.setenv("GATEKEEPER_WATCH", "polling")
    watched.watch()
    assert watched._watcher.kind == "polling"
    before = watched.generation
    edit_in_place(watched.conf_d)
    assert served(wait_for_swap(watched, before)) == {"api": NEW, "extra": OLD}


def test_watcher_survives_a_failing_callback(tmp_path):
    calls: List[int] = []

    def on_change() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("compile blew up")

    watcher = Watcher(tmp_path, on_change, debounce=0.02)
    watcher.start()
    try:
        (tmp_path / "a.yaml").write_text("one")
        assert wait_until(lambda: len(calls) == 1, TIMEOUT)
        (tmp_path / "a.yaml").write_text("two")
        assert wait_until(lambda: len(calls) == 2, TIMEOUT)
    finally:
        watcher.stop()


def test_endless_events_still_reload(tmp_path):
    """A file written without pause (a log in conf.d) cannot hold reloads back beyond ``max_delay``."""
    calls: List[float] = []
    watcher = Watcher(tmp_path, lambda: calls.append(1), debounce=0.1, max_delay=0.3)
    watcher.start()
    writing = True

    def writer() -> None:
        with open(tmp_path / "app.log", "a") as log:
            while writing:
                log.write("line\n")
                log.flush()
                gevent.sleep(0.02)

    busy = gevent.spawn(writer)
    try:
        assert wait_until(lambda: len(calls) >= 2, TIMEOUT), "reloads starved by endless events"
        assert not busy.dead
    finally:
        writing = False
        busy.join()
        watcher.stop()


def test_watcher_restarts_when_conf_d_is_replaced(watched):
    """conf.d deleted (its inotify watch dies with it) and re-created: watching resumes by itself."""
    root = watched.conf_d
    shutil.rmtree(root)
    assert wait_until(lambda: watched.last_error is not None, TIMEOUT)  # the previous configuration stays
    assert served(watched.config) == BOTH_OLD
    before = watched.generation
    root.mkdir()
    (root / "routes.yaml").write_text(manifest(NEW))
    assert served(wait_for_swap(watched, before)) == {"api": NEW}


def test_wait_for_generation_times_out(watched):
    assert watched.wait_for_generation(watched.generation + 1, 0.05) is False
    assert watched.wait_for_generation(watched.generation, 0) is True


# -- the real server --------------------------------------------------------------------------------
GENERATION_LINE = re.compile(r"configuration generation (\d+) loaded")


class GatekeeperProcess:
    """``python -m gatekeeper serve`` on a free port; its log is read to follow the generation."""

    def __init__(self, conf_d: Path, port: int, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.generation = 0
        self.log: List[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf_d), "--listen", f"127.0.0.1:{port}",
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.reader = gevent.spawn(self._read_log)
        line = self.proc.stdout.readline()
        assert line.startswith("gatekeeper listening on"), line + self.proc.stderr.read()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = GENERATION_LINE.search(line)
            if found:
                self.generation = int(found.group(1))

    def wait_for_generation(self, generation: int, timeout: float = TIMEOUT) -> bool:
        return wait_until(lambda: self.generation >= generation, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=1)


@pytest.fixture
def gatekeeper_process(free_port) -> Iterator[Callable[..., GatekeeperProcess]]:
    started: List[GatekeeperProcess] = []

    def start(conf_d: Path, *args: str, env: Optional[Dict[str, str]] = None) -> GatekeeperProcess:
        started.append(GatekeeperProcess(conf_d, free_port, *args, env=env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def upstream_answering(url: str) -> Callable[[], Optional[str]]:
    """A probe: which echo upstream answers ``url`` (None for a non-200 answer)."""
    def probe() -> Optional[str]:
        answer = requests.get(url, timeout=2)
        return answer.json()["server"] if answer.status_code == 200 else None
    return probe


def test_sighup_alone_reloads_real_server(conf_d, wsgi_server, gatekeeper_process):
    upstream = wsgi_server(named_echo_app("a"))
    conf_d("routes.yaml", manifest(upstream.url))
    gk = gatekeeper_process(conf_d.root, "--no-watch")
    assert gk.wait_for_generation(1)
    conf_d("more.yaml", manifest(upstream.url, "more", "/more"))
    probe = upstream_answering(gk.url + "/more")
    assert probe() is None  # 404: nothing watches conf.d
    gk.proc.send_signal(signal.SIGHUP)
    assert gk.wait_for_generation(2)
    assert probe() == "a"


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_real_server_watches_conf_d(conf_d, wsgi_server, gatekeeper_process, observer):
    """The trap of STYLE.md checked where it matters: a monkey-patched ``gatekeeper serve`` sees the files."""
    upstreams = {name: wsgi_server(named_echo_app(name)) for name in ("a", "b")}
    conf_d("routes.yaml", manifest(upstreams["a"].url))
    gk = gatekeeper_process(conf_d.root, env={"GATEKEEPER_WATCH": observer})
    assert upstream_answering(gk.url + "/api")() == "a"
    conf_d("more.yaml", manifest(upstreams["b"].url, "more", "/more"))
    assert wait_until(lambda: upstream_answering(gk.url + "/more")() == "b", 3.0)
    conf_d("routes.yaml", manifest(upstreams["b"].url))
    assert wait_until(lambda: upstream_answering(gk.url + "/api")() == "b", 3.0)
    assert any(f"{observer} observer" in line for line in gk.log)
    assert gk.generation >= 3


# -- no change lost at start-up; bounded watching -----------------------------------------------------------
def test_change_written_before_the_watcher_runs_is_picked_up(tmp_path):
    """After the first read, before watch() (start-up, a worker's fork): before, never seen until a later change."""
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(manifest(OLD))
    loader = ConfigLoader(root)
    loader.load()
    (root / "routes.yaml").write_text(manifest(NEW))
    (root / "more.yaml").write_text(manifest(NEW, "more", "/more"))
    loader.watch()
    try:
        assert loader.wait_for_generation(2, TIMEOUT)
        assert served(loader.config) == {"api": NEW, "more": NEW}
        assert loader.last_reload.trigger == "rescan"
    finally:
        loader.stop()


def test_rescan_with_nothing_changed_swaps_and_records_nothing(watched):
    assert watched.generation == 1
    assert [record.trigger for record in watched.history] == ["start"]
    assert not watched.changed_since_read()


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_symlink_loops_in_conf_d_are_bounded_and_reported(tmp_path, monkeypatch, observer):
    """Before: the polling observer walked ``sub/up/sub/up/...`` 2**40 ways with two such links."""
    monkeypatch.setenv("GATEKEEPER_WATCH", observer if observer == "polling" else "")
    root = tmp_path / "conf.d"
    (root / "sub").mkdir(parents=True)
    os.symlink("..", root / "sub" / "up")
    os.symlink("..", root / "sub" / "up2")
    (root / "routes.yaml").write_text(manifest(OLD))
    loader = ConfigLoader(root)
    loader.load()
    loader.watch()
    try:
        assert loader._watcher.kind == observer
        assert sorted(e.file for e in loader.config.errors) == ["sub/up", "sub/up2"]
        before = loader.generation
        edit_in_place(root)
        assert served(wait_for_swap(loader, before)) == {"api": NEW}
    finally:
        loader.stop()
