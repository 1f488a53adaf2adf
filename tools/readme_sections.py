"""README sections that tools write: the lines between ``<!-- NAME:start ... -->`` and ``<!-- NAME:end -->``.

``tools/collect_results.py`` writes the ``results`` section from ``docs/results/*.json`` and
``tools/bench.py readme`` the ``benchmarks`` section from ``docs/benchmarks/*.json``; with ``--check``
they only compare, and ``tests/test_readme_tables.py`` fails when the README differs from what they
render. Text outside the markers is left alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {re.escape(name)}:start[^\n]*-->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)


def read_section(name: str, readme: Path = README) -> str:
    """The text between the markers of section ``name`` (a ``ValueError`` when they are missing)."""
    match = _pattern(name).search(readme.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{readme}: no '<!-- {name}:start -->' ... '<!-- {name}:end -->' markers")
    return match.group(2)


def update_section(name: str, body: str, *, check: bool = False, readme: Path = README) -> bool:
    """Write ``body`` between the markers of section ``name`` (``check``: only compare). Returns
    whether the README already held exactly that."""
    body = body.rstrip("\n") + "\n"
    current = read_section(name, readme)
    if current == body or check:
        return current == body
    text = readme.read_text(encoding="utf-8")
    readme.write_text(_pattern(name).sub(lambda m: m.group(1) + body + m.group(3), text, count=1), encoding="utf-8")
    return False


def load_records(folder: Path) -> dict[str, dict]:
    """The committed JSON records of a folder, by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
