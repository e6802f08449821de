"""The Dockerfile, without docker: its instructions checked as written, and its build stage's RUN steps run in a
fresh venv against the files its COPY lines name, the result started as its ENTRYPOINT/CMD would."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import requests

from gatekeeper.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("pytest", "hypothesis", "ruff", "mypy", "flask", "gunicorn", "websockets")


def instructions(text: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def stages() -> List[List[Tuple[str, str]]]:
    found: List[List[Tuple[str, str]]] = []
    for name, args in instructions((ROOT / "Dockerfile").read_text()):
        if name == "FROM":
            found.append([])
        found[-1].append((name, args))
    return found


def only(stage: List[Tuple[str, str]], name: str) -> str:
    (value,) = [args for n, args in stage if n == name]
    return value


# --- the instructions, as written ------------------------------------------------------------------------

def test_every_base_is_python_3_11_slim_pinned_to_a_patch_version():
    for stage in stages():
        image = stage[0][1].split()[0]
        repository, _, tag = image.partition(":")
        assert repository == "python" and tag.startswith("3.11.") and "-slim" in tag, image
        assert tag.split("-")[0].count(".") == 2, f"{image}: pin the patch version (or a digest)"


def test_final_image_runs_as_a_numeric_non_root_user_without_build_tools_or_source():
    final = stages()[-1]
    user, _, group = only(final, "USER").partition(":")
    assert user.isdigit() and int(user) > 0 and (not group or int(group) > 0)
    assert [n for n, _ in final if n in ("RUN", "ADD")] == []          # nothing installed or fetched there
    copies = [args for n, args in final if n == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies)    # the built venv only, never the source


def test_entrypoint_and_cmd_parse_with_our_command_line_and_expose_their_ports():
    final = stages()[-1]
    assert json.loads(only(final, "ENTRYPOINT")) == ["gatekeeper"]
    args = build_parser().parse_args(json.loads(only(final, "CMD")))
    assert (args.command, args.conf_d) == ("serve", "/etc/gatekeeper/conf.d")
    exposed = {int(p) for p in only(final, "EXPOSE").split()}
    assert exposed == {args.listen[1], args.admin[1]}


def test_dockerignore_lets_in_what_copy_needs_and_nothing_else():
    wanted = set()
    for stage in stages():
        for name, args in stage:
            if name == "COPY" and not args.startswith("--from="):
                wanted.update(shlex.split(args)[:-1])
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == wanted, (allowed, wanted)
    assert all((ROOT / path).exists() for path in wanted)


# --- the build stage, run ---------------------------------------------------------------------------------

def build_stage(tmp: Path) -> Tuple[Path, Dict[str, str]]:
    """The build stage's COPY and RUN steps with its paths moved under ``tmp``; returns the venv and env."""
    build = stages()[0]
    moved = {"/src": tmp / "src", "/opt/gatekeeper": tmp / "opt" / "gatekeeper"}

    def where(path: str) -> str:
        for inside, outside in moved.items():
            if path == inside or path.startswith(inside + "/"):
                return str(outside) + path[len(inside):]
        return path

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)       # nothing of the checkout may leak into the fresh venv
    env.pop("VIRTUAL_ENV", None)
    for name, args in build:
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
        elif name == "COPY":
            *sources, target = shlex.split(args)
            for source in sources:
                dest = Path(where(target.rstrip("/"))) / Path(source).name if target.endswith("/") \
                    else Path(where(target))
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (ROOT / source).is_dir() else shutil.copy)(ROOT / source, dest)
        elif name == "RUN":
            command = [where(word) for word in shlex.split(args)]
            if command[0] == "python":
                command[0] = sys.executable
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=600, cwd=tmp)
    return moved["/opt/gatekeeper"], env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_build_stage_installs_a_gatekeeper_that_starts(tmp_path, echo_upstream, free_port):
    venv, env = build_stage(tmp_path)
    gatekeeper = venv / "bin" / "gatekeeper"
    version = subprocess.run([str(gatekeeper), "--version"], capture_output=True, text=True, env=env, timeout=60,
                             cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("gatekeeper "), version.stderr
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "gatekeeper" in installed and not installed & set(DEV_ONLY), installed & set(DEV_ONLY)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "api.yaml").write_text(
        "http:\n  routers: {api: {rule: PathPrefix(`/`), service: echo}}\n"
        f"  services: {{echo: {{loadBalancer: {{servers: [{{url: '{echo_upstream.url}'}}]}}}}}}\n")
    check = subprocess.run([str(gatekeeper), "check", str(conf_d)], capture_output=True, text=True, env=env,
                           timeout=60, cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check.stdout + check.stderr
    cmd = json.loads(only(stages()[-1], "CMD"))       # the image's CMD, with this test's folder and ports
    cmd[cmd.index("--conf-d") + 1] = str(conf_d)
    cmd[cmd.index("--listen") + 1] = f"127.0.0.1:{free_port}"
    cmd[cmd.index("--admin") + 1] = "127.0.0.1:0"
    started = time.monotonic()
    with subprocess.Popen([str(gatekeeper), *cmd], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as proc:
        try:
            answer = None
            while answer is None and time.monotonic() - started < 30:
                try:
                    answer = requests.get(f"http://127.0.0.1:{free_port}/x", timeout=2)
                except requests.ConnectionError:
                    time.sleep(0.1)
            assert answer is not None and answer.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
