"""The README's config reference and parameter table, generated from config.toml's comments and
from `options.PARAMETERS`.

Each key's description is the comment block right above it; a table's own comment sits above
its header. `python -m imgproxy.configdoc README.md` rewrites the blocks between the markers;
tests/test_readme_config.py fails when README.md drifts from config.toml or the parameters.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- config-reference:begin (generated from config.toml by `python -m imgproxy.configdoc README.md`) -->"
END = "<!-- config-reference:end -->"
PARAMS_BEGIN = (
    "<!-- parameters:begin (generated from imgproxy/options.py by `python -m imgproxy.configdoc README.md`) -->"
)
PARAMS_END = "<!-- parameters:end -->"
HEADER = re.compile(r"\[([\w.]+)\]")
KEY = re.compile(r"(\w+)\s*=\s*(.+)")


@dataclass
class Section:
    name: str
    comment: str = ""
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (key, default, comment)
    example: bool = False  # a commented-out table (`# [watermarks.logo]`): the keys are examples


def _example_line(line: str) -> str | None:
    """The text of a commented-out TOML line inside an example table (`# key = v`, `# # comment`)."""
    return line[1:].strip() if line.startswith("#") else None


def parse(toml_text: str) -> list[Section]:
    """Sections with their keys, defaults as written, and the comments above them."""
    sections: list[Section] = []
    comment: list[str] = []
    example = False
    for raw in toml_text.splitlines():
        line = raw.strip()
        text = _example_line(line)
        if text is not None and (example or HEADER.fullmatch(text)):
            if match := HEADER.fullmatch(text):
                sections.append(Section(match[1], " ".join(comment), example=True))
                comment, example = [], True
            elif text.startswith("#"):
                comment.append(text.lstrip("#").strip())
            elif match := KEY.fullmatch(text):
                sections[-1].keys.append((match[1], match[2], " ".join(comment)))
                comment = []
            continue
        example = False
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif not line:
            comment = []
        elif match := HEADER.fullmatch(line):
            sections.append(Section(match[1], " ".join(comment)))
            comment = []
        elif (match := KEY.fullmatch(line)) and sections:
            sections[-1].keys.append((match[1], match[2], " ".join(comment)))
            comment = []
    return sections


def _cell(text: str) -> str:
    """Literal text in a table cell: no column breaks, HTML tags or emphasis."""
    return _code(text).replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    """A code span in a table cell: only the column separator needs escaping."""
    return text.replace("|", "\\|")


def markdown(sections: list[Section]) -> str:
    out = []
    presets = [s for s in sections if s.name.startswith("presets.")]
    for section in sections:
        if section in presets:
            continue
        if section.example:  # `[watermarks.logo]` documents `[watermarks.NAME]`
            table = section.name.rsplit(".", 1)[0] + ".NAME"
            out += [f"#### `[{table}]`", "", section.comment, "", "| key | example | meaning |", "| --- | --- | --- |"]
        else:
            out += [f"#### `[{section.name}]`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        out += [f"| `{key}` | `{_code(default)}` | {_cell(comment)} |" for key, default, comment in section.keys]
        out.append("")
    if presets:
        out += ["#### `[presets.NAME]`", "", presets[0].comment, "", "| preset | parameters |", "| --- | --- |"]
        for preset in presets:
            params = ", ".join(f"{key} = {default}" for key, default, _ in preset.keys)
            out.append(f"| `{preset.name.removeprefix('presets.')}` | `{_code(params)}` |")
        out.append("")
    return "\n".join(out)


def reference(toml_text: str) -> str:
    """The generated block, markers included."""
    return f"{BEGIN}\n\n{markdown(parse(toml_text))}\n{END}"


def parameter_table() -> str:
    """The `/picture` parameter table, markers included: canonical name, aliases, meaning."""
    from .options import PARAMETERS

    out = [PARAMS_BEGIN, "", "| parameter | meaning |", "| --- | --- |"]
    for p in PARAMETERS:
        aliases = f" [{', '.join(f'`{a}`' for a in p.aliases)}]" if p.aliases else ""
        out.append(f"| `{p.name}`{aliases} | {_code(p.help)} |")
    return "\n".join([*out, "", PARAMS_END])


def replace_block(readme: str, block: str, begin: str = BEGIN, end_marker: str = END) -> str:
    start, end = readme.find(begin), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README has no {begin!r} … {end_marker!r} markers")
    return readme[:start] + block + readme[end + len(end_marker) :]


def main(argv: list[str]) -> int:
    config = Path(__file__).resolve().parents[1] / "config.toml"
    block = reference(config.read_text(encoding="utf-8"))
    if not argv:
        print(block)
        return 0
    readme = Path(argv[0])
    text = replace_block(readme.read_text(encoding="utf-8"), block)
    text = replace_block(text, parameter_table(), PARAMS_BEGIN, PARAMS_END)
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
