"""The shell blocks of README.md and docs/kubernetes.md run as written (issue 19: a first run that works as pasted).

Which blocks run: fences tagged ``sh``, ``bash``, ``shell`` or ``console``. A block preceded by an HTML comment
``<!-- docs-shell: skip (why) -->`` is not run (the comment says why; the reader never sees it). In ``sh``
blocks every line is a command (a trailing ``\\`` joins lines); in ``console`` blocks lines starting with ``$ ``
are commands and the lines after one are its expected output.

How they run: blocks of one page run in order, in one scratch copy of the project's folder (README, docs/,
conf.d/, tests/data/) with the project's ``.venv/bin`` first on ``PATH``, as a reader at the project's root
would. So that runs never collide (with each other or with a reader's own gateway), two things are rewritten
in commands, expected output and the copied files alike: ``/tmp/`` is a folder of the scratch copy, and the
documented ports (8080, 9000, 9090) are free ports (``gatekeeper serve`` without ``--listen`` gets
``--listen 127.0.0.1:8080``, its default, rewritten too). Nothing else is.

What is checked: no command prints a traceback; a command shown without output exits 0; a command shown
with output (a ``console`` block) prints each expected line that has no ``...`` (which elides), whatever its
exit status (``gatekeeper check`` exits 1 when it lists problems). A command ending in ``&`` runs in the
background until the page is done; the next command starts once it printed its expected line (or its first
line). Variables a command assigns (``TOKEN=$(...)``) are kept for the commands after it.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("GATEKEEPER_VENV", ROOT / ".venv")) / "bin"
PAGES = ("README.md", "docs/kubernetes.md")
SHELL_TAGS = {"sh", "bash", "shell", "console"}
DOC_PORTS = ("8080", "9000", "9090")
COPIED = ("README.md", "docs", "conf.d", "tests/data")
COMMAND_SECONDS = 60
BACKGROUND_SECONDS = 20
SKIP = re.compile(r"<!--\s*docs-shell:\s*skip\b(.*?)-->", re.DOTALL)
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
# Blocks of pages this test does not own that need one step first, keyed by (page, the block's first command).
# kubernetes.md's second block shows conf.d *without* the Endpoints file the first block added.
BEFORE: Dict[Tuple[str, str], str] = {
    ("docs/kubernetes.md", "gatekeeper check /tmp/conf.d"): "rm -f /tmp/conf.d/whoami-endpoints.yaml",
}


@dataclass
class Command:
    text: str
    expected: List[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.text.rstrip().endswith("&")


@dataclass
class Block:
    page: str
    line: int
    tag: str
    commands: List[Command]
    skip: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def blocks_of(page: str, text: str) -> Iterator[Block]:
    """Every shell block of a page, with its commands (and, for console blocks, their expected output)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"```(\w+)\s*$", lines[index])
        if fence is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if fence.group(1) in SHELL_TAGS:
            before = "\n".join(lines[max(0, index - 3):index])
            skipped = SKIP.search(before)
            body = lines[index + 1:end]
            commands = console_commands(body) if fence.group(1) == "console" else script_commands(body)
            yield Block(page, index + 1, fence.group(1), commands,
                        skip=skipped.group(1).strip() if skipped else None)
        index = end + 1


def script_commands(body: List[str]) -> List[Command]:
    commands: List[Command] = []
    pending = ""
    for line in body:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = strip_comment(pending + line).strip()
        pending = ""
        if text:
            commands.append(Command(text))
    return commands


def console_commands(body: List[str]) -> List[Command]:
    commands: List[Command] = []
    for line in body:
        if line.startswith("$ "):
            commands.append(Command(strip_comment(line[2:]).strip()))
        elif commands and line.strip():
            commands[-1].expected.append(line.strip())
    return commands


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` starting a word, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Session:
    """One page's run: the scratch copy, the rewrites, the variables assigned so far, the background jobs."""

    def __init__(self, work: Path) -> None:
        self.project = work / "project"
        self.tmp = work / "tmp"
        self.tmp.mkdir()
        self.ports = {port: str(free_port()) for port in DOC_PORTS}
        for name in COPIED:
            source, target = ROOT / name, self.project / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
        (self.project / ".venv").symlink_to(VENV_BIN.parent)
        for path in self.project.rglob("*.yaml"):
            path.write_text(self.rewrite(path.read_text()))
        self.env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(self.tmp))
        self.jobs: List[Tuple[subprocess.Popen[bytes], Path]] = []

    def rewrite(self, text: str) -> str:
        text = text.replace("/tmp/", f"{self.tmp}/")
        if re.match(r"(\S*/)?gatekeeper serve\b", text) and "--listen" not in text and "--entrypoint" not in text:
            text = text.replace("gatekeeper serve", "gatekeeper serve --listen 127.0.0.1:8080", 1)  # the default
        for port, free in self.ports.items():
            text = re.sub(rf"(?<![0-9]){port}(?![0-9])", free, text)
        return text

    def run(self, command: Command) -> None:
        text = self.rewrite(command.text)
        if command.background:
            self.start(text.rstrip().rstrip("&"), [self.rewrite(e) for e in command.expected])
            return
        assigned = ASSIGNMENT.match(text)
        kept = self.tmp / "assigned"
        script = f'{text}\nstatus=$?; printf %s "${assigned.group(1)}" > "{kept}"; exit $status' if assigned else text
        done = subprocess.run(["bash", "-c", script], cwd=self.project, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_SECONDS)
        output = done.stdout.decode(errors="replace")
        assert "Traceback (most recent call last)" not in output, f"{command.text}\n{output}"
        if not command.expected:  # else the output shown is the check (`check` exits 1 when it lists problems)
            assert done.returncode == 0, f"{command.text}\nexit status {done.returncode}:\n{output}"
        if assigned:
            self.env[assigned.group(1)] = kept.read_text()
        for expected in command.expected:
            if "..." not in expected:
                shown = output.replace("\r", "")
                assert self.rewrite(expected) in shown, f"{command.text}\nmissing: {expected}\n{output}"

    def start(self, text: str, expected: List[str]) -> None:
        log = self.tmp / f"job{len(self.jobs)}.log"
        with open(log, "wb") as out:
            job = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=self.project, env=self.env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.jobs.append((job, log))
        wanted = next((e for e in expected if "..." not in e), None)
        deadline = time.monotonic() + BACKGROUND_SECONDS
        while time.monotonic() < deadline:
            seen = log.read_text(errors="replace")
            if (wanted in seen) if wanted else "\n" in seen:
                return
            assert job.poll() is None, f"{text} ended (exit {job.returncode}):\n{seen}"
            time.sleep(0.05)
        pytest.fail(f"{text}: not ready after {BACKGROUND_SECONDS} s:\n{log.read_text(errors='replace')}")

    def close(self) -> None:
        for job, _ in self.jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGTERM)
            try:
                job.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()


def page_blocks(page: str) -> List[Block]:
    return list(blocks_of(page, (ROOT / page).read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_shell_blocks_run_as_written(page: str, tmp_path: Path) -> None:
    blocks = [b for b in page_blocks(page) if b.skip is None]
    assert blocks, f"{page}: no shell block to run"
    session = Session(tmp_path)
    try:
        for block in blocks:
            step = BEFORE.get((page, block.commands[0].text)) if block.commands else None
            if step:
                session.run(Command(step))
            for command in block.commands:
                session.run(command)
    finally:
        session.close()


def test_every_skipped_block_says_why() -> None:
    for page in PAGES:
        for block in page_blocks(page):
            assert block.skip is None or len(block.skip) > 10, f"{block.name}: a skip must say why"


@pytest.mark.parametrize("text, commands", [
    ("```sh\nmkdir -p /tmp/x && cp a b   # copy\nls \\\n  -l\n```\n",
     [("mkdir -p /tmp/x && cp a b", []), ("ls    -l", [])]),
    ("```console\n$ gatekeeper check d\nd: ok\n\n$ echo '# not a comment'\n```\n",
     [("gatekeeper check d", ["d: ok"]), ("echo '# not a comment'", [])]),
    ("<!-- docs-shell: skip (serves forever) -->\n```sh\nserve\n```\n```yaml\na: 1\n```\n", [("serve", [])]),
], ids=["sh", "console", "skip-and-yaml"])
def test_blocks_are_read_as_documented(text: str, commands: List[Tuple[str, List[str]]]) -> None:
    blocks = list(blocks_of("page.md", text))
    assert [(c.text, c.expected) for b in blocks for c in b.commands] == commands
    assert [b.skip for b in blocks] == [("(serves forever)" if "skip" in text else None)]
