"""README's config reference is generated from config.toml, and config.toml documents every key."""

import dataclasses
import tomllib
import typing

import pytest

from imgproxy import configdoc
from imgproxy.config import Config

from .conftest import PROJECT

CONFIG_TOML = (PROJECT / "config.toml").read_text(encoding="utf-8")


def schema_keys(cls=Config, prefix="") -> set[str]:
    """Every leaf key the loader accepts, as section.key."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("presets", "base_dir"):
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
        if not s.name.startswith("presets.")
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
