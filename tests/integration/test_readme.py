"""Every code block of README.md runs, as written, against a real server: the README cannot drift from the code.

The blocks are read from README.md when the test runs, and run section by section (one test per ``## `` section,
in README order), each section in a fresh working directory that holds a ``scripts`` link to the repository's
``scripts/`` (the README's commands run from a clone). The rules:

- Only fenced blocks tagged ``python`` or ``sh`` run. A block whose tag is followed by a file name (```` ```sh
  on-change.sh ````, ```` ```yaml agent.yaml ````) is that file: it is written into the working directory before the
  section's blocks run, and not run itself. Other tags (``text``, ...) are not run.
- The environment: ``DISCO_NATS_URL`` names the server, no other ``DISCO_*`` variable leaks in from the test's own
  environment, and ``disco`` on the ``PATH`` is this checkout's command. The server is a ``disco up`` (nats-server with
  JetStream + an aggregator, prefix ``disco``) that the test starts for the whole module; a section whose blocks
  contain a ``disco up`` line (the tenancy section: ``disco up --auth``) gets that one instead, on a port of its own:
  the test appends ``--port P`` to that line (the README's default 4222 may be taken on a shared machine), and the
  server stays up until the end of the section, so the section's later blocks use it.
- ``python`` blocks are complete programs: each must exit 0 within 60 s. A comment on a line that calls ``print(``
  states what it prints: each part between `` / `` must appear in the program's output. Every python block states
  at least one.
- ``sh`` blocks run line by line (a line ending in ``\\`` continues), each line through ``bash -c`` in the working
  directory; a line that only assigns variables (``ADMIN="--creds ..."``) sets them for the rest of the section.
  Long-running commands (``disco up|aggregator|watch|worker|dns|agent|gateway|announce``, ``disco render``
  without ``--once``, and any line ending in ``&``) start in the background and must be alive before the next
  line runs: ``disco up`` once it printed ``disco is up``, ``disco announce`` its instance id, ``dns``, ``worker``,
  ``render``, ``agent``, ``gateway`` and ``aggregator`` their ready line, the others after 3 s. At the end of the
  block (of the section for ``disco up``) they get SIGTERM and must exit 0 (a command that is not ``disco``, such
  as ``python3 -m http.server``, may also die of the signal). Other lines must exit 0, or with the code a comment
  on the line states (``# exit 3``). Every line prints what its comment quotes after ``prints`` (``# prints
  "10.0.0.5"``; a background command before it is stopped, waited for up to 10 s).
- Files the blocks say they write are checked: ``on-change.sh``'s ``changes.log`` lines (with every variable set)
  and ``billing.txt``.
- Skipped, narrowly: the ``## Two commands`` section (installing; CI runs the second line itself, as ``.ci/run``,
  and the test checks that they are identical), and a ``sh`` block that drives Docker (a line starting with
  ``docker-compose`` or ``sudo``): it needs root, a Docker engine and minutes of building, and
  ``scripts/compose_check.py`` runs the same steps before a release. Lines starting with ``dig`` or ``curl`` need
  the binary: missing, the section is skipped (failed under ``CI=true``) via ``tests.helpers.require_binary``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.natsserver import free_port
from tests.helpers import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)(?:[ \t]+(\S+))?[ \t]*$")
DAEMON = re.compile(
    r"^(?:[A-Za-z_]\w*=\S*\s+)*disco\s+(up|aggregator|watch|worker|dns|agent|gateway|announce|render)\b")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
EXIT = re.compile(r"#.*?\bexit (\d+)\b")
PRINTS = re.compile(r'\bprints "([^"]*)"')
BINARIES = {"dig": "dnsutils", "curl": "curl", "nginx": "nginx"}
SKIPPED_SECTIONS = {"Two commands"}
DOCKER = re.compile(r"^(?:docker-compose|sudo)\b")  # blocks run by scripts/compose_check.py, not here
CHANGE_LINE = re.compile(r"^(added|updated|removed) acme/billing/\S+ rev \d+ group sync attempt 1 seq \d+: \{", re.M)
# what a daemon prints once it serves (the others: alive after SETTLE s)
READY = {
    "aggregator": re.compile(r"aggregator ready"), "worker": re.compile(r"disco: worker .* ready"),
    "render": re.compile(r"disco: render .* ready"), "agent": re.compile(r"disco: agent ready"),
    "gateway": re.compile(r"disco: gateway on http"), "dns": re.compile(r"following its view"),
}
SETTLE = 3.0
PY_DEADLINE = 60.0
LINE_DEADLINE = 60.0


@dataclass
class Block:
    lang: str
    file: str | None
    text: str
    line: int


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def read_sections(text: str) -> list[Section]:
    """The README's ``## `` sections with their fenced blocks, in order."""
    sections = [Section("(top)")]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
        elif m:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start + 1}: unclosed code block"
            block = Block(m.group(1), m.group(2), "\n".join(body) + "\n", start + 1)
            if not (block.lang == "sh" and any(DOCKER.match(x) for x in shell_lines(block.text))):
                sections[-1].blocks.append(block)
        i += 1
    return [s for s in sections if s.blocks]


def shell_lines(text: str) -> Iterator[str]:
    """Logical lines: continuations joined; blank and comment-only lines dropped."""
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            yield line


SECTIONS = read_sections(README.read_text())


def code_part(line: str) -> str:
    """The line without its trailing comment: the first ``#`` after whitespace that is outside quotes."""
    for m in re.finditer(r"\s#", line):
        head = line[: m.start()]
        try:
            shlex.split(head)
        except ValueError:  # an unclosed quote: this '#' is inside it
            continue
        return head.rstrip()
    return line.rstrip()


class Background:
    """A long-running command of a block, in its own process group, output in files."""

    def __init__(self, line: str, cwd: Path, env: dict[str, str], name: str, prints: list[str]) -> None:
        self.line = line
        self.prints = prints
        self.out = cwd / f".{name}.out"
        self.err = cwd / f".{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", line], cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def settle(self, ready: re.Pattern[str] | None, deadline: float) -> None:
        """Wait for ``ready`` in the output (for at most ``deadline`` s), or SETTLE s when there is none."""
        end = time.monotonic() + (deadline if ready else SETTLE)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if ready is not None and ready.search(self.text()):
                break
            time.sleep(0.05)
        rc = self.proc.poll()
        assert rc in (None, 0), f"{self.line!r} exited {rc} while starting:\n{self.text()}"
        if ready is not None and rc is None:
            assert ready.search(self.text()), f"{self.line!r} not ready after {deadline} s:\n{self.text()}"

    def stop(self) -> None:
        end = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < end and not all(
                text in self.out.read_text() for text in self.prints):
            time.sleep(0.05)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"{self.line!r} did not stop on SIGTERM within 30 s:\n{self.text()}") from None
        allowed = {0} if DAEMON.match(self.line) else {0, -signal.SIGTERM}
        assert rc in allowed, f"{self.line!r} exited {rc} on SIGTERM:\n{self.text()}"
        assert "Traceback" not in self.text(), self.text()
        for text in self.prints:
            assert text in self.out.read_text(), f"{self.line!r}: {text!r} not printed:\n{self.text()}"


def ready_pattern(line: str) -> re.Pattern[str] | None:
    m = DAEMON.match(line)
    if m is None:
        return None
    kind = m.group(1)
    if kind == "up":
        return re.compile(r"^disco is up:", re.M)
    if kind == "announce":
        return re.compile(r"^[0-9a-z][\w.-]*$", re.M)  # its instance id, first on stdout
    return READY.get(kind)


class Runner:
    """Runs one section's blocks in one working directory and environment."""

    def __init__(self, cwd: Path, env: dict[str, str], up_port: int | None) -> None:
        self.cwd = cwd
        self.env = env
        self.up_port = up_port
        self.count = 0
        self.section_daemons: list[Background] = []

    def python(self, block: Block) -> None:
        path = self.cwd / f"readme_{block.line}.py"
        path.write_text(block.text)
        res = subprocess.run([sys.executable, str(path)], cwd=self.cwd, env=self.env, capture_output=True,
                             text=True, timeout=PY_DEADLINE, check=False)
        where = f"README.md:{block.line}"
        assert res.returncode == 0, f"{where}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        expected = [part.strip() for line in block.text.splitlines() if "print(" in line and "  # " in line
                    for part in line.split("  # ", 1)[1].split(" / ")]
        assert expected, f"{where}: a python block states what it prints (a comment on a print line)"
        for part in expected:
            assert part in res.stdout, f"{where}: {part!r} not printed:\n{res.stdout}\n{res.stderr}"

    def sh(self, block: Block) -> None:
        daemons: list[Background] = []
        try:
            for line in shell_lines(block.text):
                self.sh_line(line, block, daemons)
            self.wait_for_outputs(daemons)
        finally:
            for d in reversed(daemons):
                d.stop()

    def wait_for_outputs(self, daemons: list[Background]) -> None:
        """Before a block's daemons stop: wait (poll, 30 s) for what they promise to produce."""
        if any("on-change.sh" in d.line for d in daemons):
            log = self.cwd / "changes.log"
            end = time.monotonic() + 30
            while not (log.exists() and CHANGE_LINE.search(log.read_text())) and time.monotonic() < end:
                time.sleep(0.05)

    def sh_line(self, line: str, block: Block, daemons: list[Background]) -> None:
        where = f"README.md:{block.line}: {line!r}"
        code = code_part(line)
        word = shlex.split(code)[0]
        if word in BINARIES:
            require_binary(word, BINARIES[word])
        tokens = shlex.split(code)
        if all(ASSIGNMENT.match(t) for t in tokens):  # variables for the rest of the section
            assigned = subprocess.run(["bash", "-c", f"set -a; {code}\nenv -0"], cwd=self.cwd, env=self.env,
                                      capture_output=True, check=True)
            self.env = dict(kv.split("=", 1) for kv in assigned.stdout.decode().split("\0") if "=" in kv)
            return
        background = code.endswith("&") and not code.endswith("&&")
        if background:
            code = code[:-1].rstrip()
        daemon = DAEMON.match(code)
        if daemon and daemon.group(1) == "render" and "--once" in code:
            daemon = None
        if background or daemon:
            if daemon and daemon.group(1) == "up":
                assert self.up_port is not None
                code += f" --port {self.up_port}"
            self.count += 1
            bg = Background(code, self.cwd, self.env, f"bg{self.count}", PRINTS.findall(line[len(code):]))
            (self.section_daemons if daemon and daemon.group(1) == "up" else daemons).append(bg)
            bg.settle(ready_pattern(code), deadline=60.0)
            return
        m = EXIT.search(line[len(code):])
        expected = int(m.group(1)) if m else 0
        res = subprocess.run(["bash", "-c", code], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                             timeout=LINE_DEADLINE, check=False)
        assert res.returncode == expected, (
            f"{where}: exit {res.returncode}, expected {expected}\n{res.stdout}\n{res.stderr}")
        assert "Traceback" not in res.stderr, f"{where}:\n{res.stderr}"
        for text in PRINTS.findall(line[len(code):]):
            assert text in res.stdout, f"{where}: {text!r} not printed\n{res.stdout}\n{res.stderr}"

    def close(self) -> None:
        for d in reversed(self.section_daemons):
            d.stop()


def disco_shim(directory: Path) -> Path:
    """A ``disco`` command on the PATH that runs this checkout's CLI with the test's Python."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "disco"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m services "$@"\n')
    shim.chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``disco up`` (nats-server + aggregator, prefix ``disco``) for the sections that do not start their own."""
    base = tmp_path_factory.mktemp("readme-up")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    cmd = [sys.executable, "-m", "services", "up", "--port", str(port), "--data-dir", str(base / "data"),
           "--no-metrics", "--monitor-port", "0"]
    with (base / "up.out").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        end = time.monotonic() + 60
        while "disco is up:" not in (base / "up.out").read_text():
            assert proc.poll() is None and time.monotonic() < end, (base / "up.out").read_text()
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_the_two_commands_are_the_ci_command() -> None:
    """The skipped section's test line is exactly what CI runs (its last line of ``.ci/run``)."""
    two = next(s for s in SECTIONS if s.title == "Two commands")
    lines = list(shell_lines(two.blocks[0].text))
    ci_last = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert len(lines) == 2
    assert lines[1] == ci_last
    assert lines[0].endswith(".venv/bin/disco up")


RUN = [s for s in SECTIONS if s.title not in SKIPPED_SECTIONS
       and any(b.lang in ("python", "sh") and b.file is None for b in s.blocks)]


@pytest.mark.parametrize("section", RUN, ids=[re.sub(r"\W+", "-", s.title).strip("-").lower() for s in RUN])
def test_readme_section_runs(section: Section, shared_server: str, tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "scripts").symlink_to(ROOT / "scripts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    env["PATH"] = f"{disco_shim(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    own_up = any(DAEMON.match(line) and DAEMON.match(line).group(1) == "up"  # type: ignore[union-attr]
                 for b in section.blocks if b.lang == "sh" and b.file is None for line in shell_lines(b.text))
    up_port = free_port() if own_up else None
    env["DISCO_NATS_URL"] = f"nats://127.0.0.1:{up_port}" if up_port else shared_server
    for block in section.blocks:
        if block.file is not None:
            (cwd / block.file).write_text(block.text)
    runner = Runner(cwd, env, up_port)
    ran = 0
    try:
        for block in section.blocks:
            if block.file is not None:
                continue
            if block.lang == "python":
                runner.python(block)
                ran += 1
            elif block.lang == "sh":
                runner.sh(block)
                ran += 1
    finally:
        runner.close()
    assert ran > 0
    # what the blocks promise to leave behind
    if (cwd / "on-change.sh").exists():
        log = (cwd / "changes.log").read_text()
        assert CHANGE_LINE.search(log), log
    if (cwd / "billing.txt").exists():
        assert (cwd / "billing.txt").read_text().split() == ["10.0.0.5:8080"]
