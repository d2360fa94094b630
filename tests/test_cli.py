"""The command line as a user runs it (a real subprocess): errors are one line naming the flag as
typed, never a traceback; `serve` refuses open uploads on a public address and warns about risky
settings; the demo images never stop start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CORPUS, free_port, to_toml

pytestmark = pytest.mark.timeout(120)
SOURCE = "photos/alpha_dice.png"  # 300x225


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "config.toml"
    settings = {
        "sources": {"local": {"root": str(CORPUS), "generate_demo": False}},
        "cache": {"dir": str(tmp_path / "cache")},
        "uploads": {"enabled": False},  # check-config would want the corpus writable
    }
    path.write_text(to_toml(settings))
    return path


def run(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "imgproxy", *args],
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_render_to_a_missing_directory_is_one_line(tmp_path, config_path):
    proc = run(tmp_path, "render", SOURCE, "-o", "missing-dir/x.jpg", "--config", str(config_path))
    assert proc.returncode == 1
    assert "missing-dir/x.jpg" in one_line_error(proc)


def test_render_refuses_an_unknown_output_suffix(tmp_path, config_path):
    proc = run(tmp_path, "render", SOURCE, "-o", "x.xyz", "--config", str(config_path))
    assert proc.returncode == 1
    assert "unknown image suffix" in one_line_error(proc)
    assert not (tmp_path / "x.xyz").exists()
    # --format decides when given
    proc = run(tmp_path, "render", SOURCE, "-o", "x.xyz", "--format", "png", "--config", str(config_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.xyz").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", ["render", "url"])
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--width", "200000"], "--width: 200000 is above the limit of 4096 px"),
        (["--width", "5000"], "--width: 5000 is above the limit of 4096 px"),
        (["--height", "3000", "--dpr", "2"], "--height: 3000 x dpr 2 is above the limit of 4096 px"),
        (["--width", "abc"], "--width: 'abc' is not a number"),
        (["--format", "bmp"], "--format: 'bmp' is not a format"),
        (["--quality", "0"], "--quality: 0 is out of range (allowed: 1..100 or auto)"),
    ],
)
def test_flag_errors_name_the_flag_and_the_real_limit(tmp_path, config_path, command, flags, expected):
    output = ["-o", "out.png"] if command == "render" else []
    proc = run(tmp_path, command, SOURCE, *flags, *output, "--config", str(config_path))
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert expected in line, line
    assert "100000" not in line


def test_url_prints_a_valid_url(tmp_path, config_path):
    proc = run(tmp_path, "url", SOURCE, "--width", "320", "--format", "webp", "--config", str(config_path))
    assert (proc.returncode, proc.stdout.strip()) == (0, f"/picture/{SOURCE}?scalex=320&encoding=webp")


def test_warm_reports_a_missing_source_once(tmp_path, config_path):
    proc = run(tmp_path, "warm", "photos/nope.jpg", SOURCE, "--preset", "small", "--config", str(config_path))
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if "nope.jpg" in line] == [
        "imgproxy: photos/nope.jpg: source not found"
    ]
    assert "warmed 2 of 2 results (1 sources x 2 variants)" in proc.stdout


def test_check_config_lists_every_problem(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[cache]\nsize_limit = "lots"\nsize_limt = 1\n[render]\njpeg_quality = 0\n[presets.big]\nwidth = -1\n'
    )
    proc = run(tmp_path, "check-config", "--config", str(path))
    assert proc.returncode == 2
    problems = proc.stderr.strip().splitlines()
    assert len(problems) == 4, proc.stderr
    for key in ("cache.size_limit", "cache.size_limt", "render.jpeg_quality", "presets.big.width"):
        assert sum(key + ":" in line for line in problems) == 1, (key, problems)


def test_a_misspelt_variable_is_named_in_a_warning(tmp_path, config_path):
    env = {"IMGPROXY_CACHE_SIZE_LIMIT": "2GB", "IMGPROXY_BOGUS": "1"}
    proc = run(tmp_path, "check-config", "--config", str(config_path), env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "not a config variable" in line]
    assert len(warnings) == 2
    assert "IMGPROXY_CACHE_SIZE_LIMIT" in warnings[1] and "IMGPROXY_CACHE__SIZE_LIMIT" in warnings[1]
    assert "IMGPROXY_BOGUS" in warnings[0]


def test_serve_refuses_open_uploads_on_a_public_address(tmp_path, config_path):
    args = ("serve", "--config", str(config_path), "--host", "0.0.0.0", "--port", str(free_port()))
    proc = run(tmp_path, *args, env={"IMGPROXY_UPLOADS__ENABLED": "true"}, timeout=30)  # before: it served
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "uploads" in line and "token" in line and "0.0.0.0" in line


def test_serve_warns_about_risky_settings(live_server):
    server = live_server({"sources": {"remote": {"allowed_hosts": ["img.example.com"]}}})
    warnings = [line for line in server.log_text().splitlines() if line.startswith("imgproxy: warning:")]
    assert any("sources.remote.allowed_hosts without security.key" in line for line in warnings), warnings
    assert any("uploads.enabled without uploads.token" in line for line in warnings), warnings
    signed = live_server({"security": {"key": "k", "allowed_widths": [320]}, "uploads": {"token": "t"}})
    assert "warning" not in signed.log_text()


@pytest.mark.parametrize("root", ["file", "proc"])
def test_unwritable_demo_root_warns_once_and_serves(live_server, tmp_path, root):
    if root == "file":
        (tmp_path / "plain-file").write_text("not a directory")
        images = tmp_path / "plain-file" / "images"
    else:
        images = Path("/proc/imgproxy-no-such-dir/images")  # nothing can be created under /proc, not even by root
    server = live_server({"sources": {"local": {"root": str(images), "generate_demo": True}}})
    with server.client() as client:
        assert client.get("/health").status_code == 200
    warnings = [line for line in server.log_text().splitlines() if "generate_demo" in line]
    assert len(warnings) == 1 and "serving without them" in warnings[0], server.log_text()
    assert "Traceback" not in server.log_text()
