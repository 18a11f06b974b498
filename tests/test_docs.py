"""The documentation holds together: links resolve, and every ``.md`` the code names exists.

- Every relative link in README.md, docs/*.md and notebooks/README.md points at a file of the
  repository, and a ``#anchor`` at a heading of that file (GitHub's anchor rules: the heading's
  text without markup, lower-cased, punctuation other than ``-``/``_`` dropped, spaces as
  ``-``, ``-1``, ``-2`` ... appended to repeats).
- Every ``*.md`` path named in the code (keras_effv2, weights_tools, tests, bench, notebooks)
  exists, and every ``docs/architecture.md §N.M`` citation names a section of that page.

Pure text processing: well under a second, on every backend.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("keras_effv2", "weights_tools", "tests", "bench", "notebooks")
# .md files the code names that are outputs it writes, not files of the repository.
WRITTEN_BY_CODE = {"runs/bench_torch.md", "bench.md"}

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# A path ending in .md, not part of a longer token and not built from a variable ($OUT/x.md).
_MD_NAME = re.compile(r"(?<![\w$./{}<>-])[\w./-]*\w\.md\b")
_SECTION_CITE = re.compile(r"docs/architecture\.md`{0,2},? §(\d+(?:\.\d+)*)")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if (ROOT / "notebooks" / "README.md").exists():
        files.append(ROOT / "notebooks" / "README.md")
    return files


def without_code(text: str) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = github_anchor(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in _LINK.findall(without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target} -> no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.relative_to(ROOT)}: {target} -> no heading #{anchor}")
    return problems


def code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*")
                  if p.suffix in (".py", ".ipynb", ".sh") and p.is_file())


def test_github_anchor_rules():
    assert github_anchor("1.2 Rounding and resolved stages") == "12-rounding-and-resolved-stages"
    assert github_anchor("Fast training step (torch, CPU)") == "fast-training-step-torch-cpu"
    assert (github_anchor("`make test-large`: the *large* cases")
            == "make-test-large-the-large-cases")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert path.exists()
    assert broken_links(path) == []


def test_md_files_named_in_code_exist():
    missing = []
    for path in code_files():
        for name in set(_MD_NAME.findall(path.read_text(encoding="utf-8", errors="replace"))):
            if name in WRITTEN_BY_CODE:
                continue
            if not ((ROOT / name).exists() or (path.parent / name).exists()):
                missing.append(f"{path.relative_to(ROOT)} names {name}")
    assert missing == []


def test_architecture_citations_name_existing_sections():
    page = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    sections = {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", page, re.M)}
    cited = {}
    for path in code_files():
        for section in _SECTION_CITE.findall(path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(section, []).append(str(path.relative_to(ROOT)))
    assert cited, "no code cites docs/architecture.md by section: the check would be vacuous"
    assert {s: f for s, f in cited.items() if s not in sections} == {}
