"""Config loading: defaults, file, environment overrides, errors naming the key (exit code 2)."""

import subprocess
import sys

import pytest

from imgproxy.config import ConfigError, load_config, parse_size

from .conftest import PROJECT


@pytest.mark.parametrize(
    "raw, expected", [(512, 512), ("512KB", 524288), ("20MB", 20971520), ("2GB", 2147483648), ("1.5KB", 1536)]
)
def test_sizes(raw, expected):
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["lots", "-1", -1, True, "12XB", ""])
def test_bad_sizes(raw):
    with pytest.raises(ConfigError):
        parse_size(raw, "cache.size_limit")


def test_shipped_config_loads_with_seed_presets():
    config = load_config(PROJECT / "config.toml", environ={})
    assert config.presets["thumbnail"] == {"width": 150, "height": 150, "mode": "crop"}
    assert [config.presets[p]["width"] for p in ("small", "medium", "large", "xl")] == [540, 768, 1080, 1200]
    assert config.cache.eviction_policy == "least-recently-used"


def test_environment_overrides_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cache]\nsize_limit = "1GB"\n')
    config = load_config(
        path,
        environ={
            "IMGPROXY_CACHE__SIZE_LIMIT": "2GB",
            "IMGPROXY_SOURCES__LOCAL__ROOT": "/srv/img",
            "IMGPROXY_SECURITY__ALLOWED_WIDTHS": "[100, 200]",
        },
    )
    assert config.cache.size_limit == 2 * 1024**3
    assert config.sources.local.root == "/srv/img"
    assert config.security.allowed_widths == (100, 200)


def test_relative_paths_follow_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cache]\ndir = "here"\n')
    config = load_config(path, environ={})
    assert config.path(config.cache.dir) == tmp_path / "here"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[cache]\nsize_limt = 1\n", "cache.size_limt"),
        ("[render]\njpeg_quality = 0\n", "render.jpeg_quality"),
        ('[server]\nport = "http"\n', "server.port"),
        ('[limits]\nmax_source_bytes = "lots"\n', "limits.max_source_bytes"),
        ("[presets.big]\nwidth = -1\n", "presets.big.width"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ("[cache\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, environ={})


def test_bad_env_value_names_the_key():
    with pytest.raises(ConfigError, match="render.workers"):
        load_config(None, environ={"IMGPROXY_RENDER__WORKERS": "many"})


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cache]\nsize_limit = "lots"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "imgproxy", "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cache.size_limit" in lines[0]


def test_check_config_masks_secrets(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[security]\nkey = "topsecret"\n[uploads]\ntoken = "alsosecret"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "imgproxy", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "topsecret" not in proc.stdout and "alsosecret" not in proc.stdout
    assert '"key": "***"' in proc.stdout
