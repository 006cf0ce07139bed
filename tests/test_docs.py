"""The project's documents are its own and stay true: hook reference, links, anchors, README size."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from corrbench import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCES = [p for base in ("corrbench", "plugins", "tests", "benchmarks", "examples")
           for p in (ROOT / base).rglob("*") if p.suffix in (".py", ".md", ".toml", ".sh") and p.is_file()]
TEXTS = [ROOT / "README.md", *DOCS.glob("*.md"), *SOURCES]


def _hookspecs() -> dict[str, list[str]]:
    specs = {}
    for name, fn in vars(hookspecs).items():
        if callable(fn) and hasattr(fn, "corrbench_spec"):
            specs[name] = list(inspect.signature(fn).parameters)
    return specs


def test_the_hook_reference_lists_every_hookspec_with_its_signature():
    text = (DOCS / "plugins.md").read_text()
    specs = _hookspecs()
    assert specs, "no hookspecs found"
    for name, args in specs.items():
        assert f"`{name}({', '.join(args)})`" in text, f"docs/plugins.md does not document {name}({', '.join(args)})"
        assert getattr(hookspecs, name).__doc__.strip(), f"{name} has no docstring"
    documented = set(re.findall(r"`(register_\w+)\(", text))
    assert documented <= set(specs), f"docs/plugins.md documents hooks that do not exist: {documented - set(specs)}"


def test_no_file_cites_a_document_outside_the_repository():
    pattern = re.compile(r"paper-protocol\.md|dataset-formats\.md|field-survey\.md|field-protocols\.md|shared/spec")
    offenders = [str(p.relative_to(ROOT)) for p in TEXTS if p != Path(__file__) and pattern.search(p.read_text(errors="ignore"))]
    assert not offenders, offenders


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens; explicit <a id> too."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            title = re.sub(r"`", "", m.group(1)).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
        out.update(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    return out


def test_every_docs_link_points_to_an_existing_page_and_heading():
    link = re.compile(r"docs/([\w\-]+\.md)(?:#([\w\-]+))?|\]\(([\w\-]+\.md)(?:#([\w\-]+))?\)")
    broken = []
    for path in TEXTS:
        text = path.read_text(errors="ignore")
        for m in link.finditer(text):
            page, anchor = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            if m.group(3) and path.parent != DOCS:  # a relative link outside docs/ is not ours to check
                continue
            target = DOCS / page
            if not target.is_file():
                broken.append(f"{path.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in _anchors(target):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}#{anchor} has no such heading")
    assert not broken, "\n".join(sorted(set(broken)))


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes"
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("name", ["LICENSE", "CITATION.cff"])
def test_license_and_citation_exist(name):
    assert (ROOT / name).is_file()
