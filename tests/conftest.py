"""Shared test fixtures: the corpus and a real server (uvicorn in a subprocess on 127.0.0.1)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .origin import Origin

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("IMGPROXY_CORPUS", PROJECT.parent / "shared" / "corpus")).resolve()


def manifest_rows() -> list[dict[str, str]]:
    with open(CORPUS / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# Every process a test starts, by pid (each leads its own process group): what it is and which test
# started it. A test must stop what it starts; pytest_sessionfinish kills any group still alive and
# fails the run, naming the test, so a leak is visible instead of lingering for minutes.
STARTED: dict[int, tuple[str, int | None]] = {}  # pid -> (what, its start time, to tell a reused pid)


def track(process: subprocess.Popen, what: str) -> subprocess.Popen:
    """Record a process started with start_new_session=True for the end-of-session check."""
    started_by = os.environ.get("PYTEST_CURRENT_TEST", "a fixture")
    STARTED[process.pid] = (f"{what} (started by {started_by})", start_time(process.pid))
    return process


def start_time(pid: int) -> int | None:
    """When the process with this pid started (clock ticks after boot); None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError):
        return None


def still_ours(pid: int) -> bool:
    """False once a tracked pid names another process: pids are reused (pid_max may be 32768)."""
    now = start_time(pid)
    return now is None or pid not in STARTED or now == STARTED[pid][1]


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (non-zombie) process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state not in "ZX":  # zombies and dead ones have exited already
            found[int(entry.name)] = (int(ppid), int(group))
    return found


def group_members(pgid: int) -> list[int]:
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]


def descendants(root: int) -> list[int]:
    processes = live_processes()
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, (ppid, _) in processes.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def kill_group(pgid: int) -> list[int]:
    """SIGKILL what is left of a process group (e.g. uvicorn workers whose supervisor was killed)."""
    members = group_members(pgid)
    if members:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 60  # a killed process takes a moment to exit (longer on a busy machine)
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return members


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM to the group leader and wait for it; then SIGKILL the rest of its group, or all of it
    if the leader did not exit in time. Returns the leader's exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if still_ours(process.pid):  # also when stopped before: a second stop must not hit a reused pid
        kill_group(process.pid)
    return process.wait(30)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The safety net: nothing a test started may outlive the session."""
    leaks = []
    for pid, (what, _) in STARTED.items():
        if still_ours(pid) and (members := kill_group(pid)):
            leaks.append(f"{what}: pids {members}")
    leaks += [f"thread {t.name} still running" for t in threading.enumerate() if t.name.startswith("origin:")]
    for pid in descendants(os.getpid()):  # untracked children too (a browser, a CLI run)
        try:
            leaks.append(f"child process {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # exited meanwhile
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write("\n")
        for line in ["LEAKED (killed now): a test did not stop what it started:", *leaks]:
            if reporter:
                reporter.write_line(line, red=True)
            else:
                print(line, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(data: dict, prefix: str = "") -> str:
    """Just enough TOML for test configs: nested tables of scalars and lists."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(to_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out) + "\n"


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class LiveServer:
    """`python -m imgproxy serve` on a free port with a temp config, in its own process group;
    stop() sends SIGTERM, then kills whatever is left of the group."""

    def __init__(self, workdir: Path, settings: dict, workers: int = 1, env: dict | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {
            "sources": {"local": {"root": str(CORPUS), "generate_demo": False}},
            "cache": {"dir": str(workdir / "cache")},
            "log": {"level": "warning"},
        }
        self.settings = deep_merge(base, settings)
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(to_toml(self.settings))
        self.workers = workers
        self.env = env or {}
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return Path(self.settings["sources"]["local"]["root"])

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings["cache"]["dir"])

    def start(self, timeout: float = 120) -> LiveServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        env.update(self.env)
        cmd = [
            sys.executable,
            "-m",
            "imgproxy",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        track(self.process, f"imgproxy serve in {self.workdir}")
        try:
            self.wait_until_answering(timeout)
        except BaseException:  # also a pytest-timeout or Ctrl-C while waiting: nothing may linger
            self.stop()
            raise
        return self

    def wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code in (200, 503):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log_text()}")

    def cpu_seconds(self) -> float:
        """CPU time the server's processes have used so far: unlike wall-clock time, it does not grow
        when other work on the machine delays the server."""
        assert self.process is not None
        ticks = 0
        for pid in group_members(self.process.pid):
            try:
                ticks += sum(int(v) for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
            except (OSError, ValueError):
                continue  # gone meanwhile
        return ticks / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def stop(self, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        code = stop_process(self.process, timeout)
        self.log.close()
        self.process = None
        return code


@pytest.fixture
def live_server(tmp_path):
    """Factory: live_server(settings={...}, workers=1, env={...}) -> started LiveServer."""
    servers: list[LiveServer] = []

    def start(
        settings: dict | None = None, workers: int = 1, env: dict | None = None, name: str | None = None
    ) -> LiveServer:
        server = LiveServer(tmp_path / (name or f"server{len(servers)}"), settings or {}, workers, env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory):
    """One server over the corpus, shared by a module's read-only tests."""
    server = LiveServer(tmp_path_factory.mktemp("corpus-server"), {})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def writable_root(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    return root


def copy_from_corpus(relative: str, root: Path, name: str | None = None) -> Path:
    target = root / (name or relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORPUS / relative, target)
    return target


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under playwright, for the browser tests (tests/chromium.py has their set-up)."""
    from playwright import sync_api

    from .chromium import CHROMIUM, CHROMIUM_ARGS  # that module imports this one

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def origin():
    """A real local HTTP origin for remote sources (tests/origin.py), one per test module."""
    server = Origin().start()
    yield server
    server.stop()
