"""The README's config reference, generated from config.toml's comments.

Each key's description is the comment block right above it; a table's own comment sits above
its header. `python -m imgproxy.configdoc README.md` rewrites the block between the markers;
tests/test_readme_config.py fails when README.md and config.toml drift apart.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- config-reference:begin (generated from config.toml by `python -m imgproxy.configdoc README.md`) -->"
END = "<!-- config-reference:end -->"
HEADER = re.compile(r"\[([\w.]+)\]")
KEY = re.compile(r"(\w+)\s*=\s*(.+)")


@dataclass
class Section:
    name: str
    comment: str = ""
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (key, default, comment)


def parse(toml_text: str) -> list[Section]:
    """Sections with their keys, defaults as written, and the comments above them."""
    sections: list[Section] = []
    comment: list[str] = []
    for raw in toml_text.splitlines():
        line = raw.strip()
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


def replace_block(readme: str, block: str) -> str:
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError("README has no config-reference markers")
    return readme[:start] + block + readme[end + len(END) :]


def main(argv: list[str]) -> int:
    config = Path(__file__).resolve().parents[1] / "config.toml"
    block = reference(config.read_text(encoding="utf-8"))
    if not argv:
        print(block)
        return 0
    readme = Path(argv[0])
    readme.write_text(replace_block(readme.read_text(encoding="utf-8"), block), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
