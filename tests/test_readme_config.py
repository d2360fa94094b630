"""README's config reference is generated from config.toml, and config.toml documents every key."""

import dataclasses
import tomllib
import typing

import pytest
from PIL import Image

from imgproxy import configdoc
from imgproxy.config import Config, WatermarkConfig, load_config

from .conftest import PROJECT

CONFIG_TOML = (PROJECT / "config.toml").read_text(encoding="utf-8")


def schema_keys(cls=Config, prefix="") -> set[str]:
    """Every leaf key the loader accepts, as section.key."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("presets", "base_dir", "watermarks"):
            continue
        name = f"{prefix}.{f.name}" if prefix else f.name
        keys |= schema_keys(hints[f.name], name) if dataclasses.is_dataclass(hints[f.name]) else {name}
    return keys


def test_readme_reference_is_generated_from_config_toml():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    start, end = readme.find(configdoc.BEGIN), readme.find(configdoc.END)
    assert 0 <= start < end, "README.md lost its config-reference markers"
    assert readme[start : end + len(configdoc.END)] == configdoc.reference(CONFIG_TOML), (
        "README.md is out of date: run `python -m imgproxy.configdoc README.md`"
    )


def test_config_toml_has_every_key_once_each_with_a_comment():
    documented = {
        f"{s.name}.{key}": comment
        for s in configdoc.parse(CONFIG_TOML)
        if not s.name.startswith("presets.") and not s.example
        for key, _, comment in s.keys
    }
    assert set(documented) == schema_keys()
    assert [key for key, comment in documented.items() if not comment] == []


def test_parse_reads_the_comment_above_each_key_and_table():
    sections = configdoc.parse(
        "# file header, not part of any key\n\n"
        '[a]\n# What x is.\n# Second line.\nx = 1\n\ny = "b|c"\n'
        "# Sets.\n[presets.one]\nwidth = 5\n"
    )
    assert [(s.name, s.comment, s.keys) for s in sections] == [
        ("a", "", [("x", "1", "What x is. Second line."), ("y", '"b|c"', "")]),
        ("presets.one", "Sets.", [("width", "5", "")]),
    ]
    table = configdoc.markdown(sections)
    assert '| `y` | `"b\\|c"` |  |' in table
    assert "| `one` | `width = 5` |" in table


def test_generated_defaults_are_what_the_loader_reads():
    parsed = tomllib.loads(CONFIG_TOML)
    for section in configdoc.parse(CONFIG_TOML):
        if section.example:
            continue
        table = parsed
        for part in section.name.split("."):
            table = table[part]
        for key, default, _ in section.keys:
            assert tomllib.loads(f"v = {default}")["v"] == table[key], (section.name, key)


def test_replace_block_needs_the_markers():
    with pytest.raises(ValueError):
        configdoc.replace_block("no markers here", "block")
    text = f"top\n{configdoc.BEGIN}\nold\n{configdoc.END}\nbottom"
    assert configdoc.replace_block(text, "NEW") == "top\nNEW\nbottom"


def test_readme_parameter_table_is_generated_from_the_parameters():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    start, end = readme.find(configdoc.PARAMS_BEGIN), readme.find(configdoc.PARAMS_END)
    assert 0 <= start < end, "README.md lost its parameter-table markers"
    assert readme[start : end + len(configdoc.PARAMS_END)] == configdoc.parameter_table(), (
        "README.md is out of date: run `python -m imgproxy.configdoc README.md`"
    )


def test_watermark_example_documents_every_key_and_loads_when_uncommented(tmp_path):
    (example,) = [s for s in configdoc.parse(CONFIG_TOML) if s.example]
    assert example.name.startswith("watermarks.") and example.comment
    assert [key for key, _, _ in example.keys] == [f.name for f in dataclasses.fields(WatermarkConfig)]
    assert [key for key, _, comment in example.keys if not comment] == []
    lines = [f"[{example.name}]"] + [f"{key} = {value}" for key, value, _ in example.keys]
    settings = tomllib.loads("\n".join(lines))["watermarks"]["logo"]
    (tmp_path / settings["image"]).parent.mkdir(parents=True)
    Image.new("RGBA", (40, 20), (255, 0, 0, 255)).save(tmp_path / settings["image"])
    (tmp_path / "config.toml").write_text("\n".join(lines) + "\n")
    overlay = load_config(tmp_path / "config.toml", environ={}).watermarks["logo"]
    assert dataclasses.asdict(overlay.settings) == settings


def test_parse_reads_a_commented_out_example_table():
    sections = configdoc.parse('# Overlays. An example:\n# [w.logo]\n# # Its file.\n# image = "a.png"\n\n[x]\ny = 1\n')
    assert [(s.name, s.comment, s.keys, s.example) for s in sections] == [
        ("w.logo", "Overlays. An example:", [("image", '"a.png"', "Its file.")], True),
        ("x", "", [("y", "1", "")], False),
    ]
    assert "#### `[w.NAME]`" in configdoc.markdown(sections)
