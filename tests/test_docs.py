"""The documentation: a short README, pages by topic, and no broken relative link anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
LINKED_FROM = [REPO / "README.md", *PAGES, REPO / "results" / "README.md", REPO / "bench" / "RESULTS.md",
               REPO / "src" / "lnpeft" / "analysis" / "grad_sample" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a `#` in a code block is no heading
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """Every relative link of a markdown page whose file (or #heading) does not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    problems = []
    for groups in LINK.findall(text):
        target = groups[0] or groups[1]
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            problems.append(f"{page.relative_to(REPO)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor})")
    return problems


@pytest.mark.parametrize("page", LINKED_FROM, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page.write_text("[ok](other.md#a-section) [file](missing.md) [anchor](other.md#nothing) "
                    "![img](img.png) [web](https://example.org)\n```\n[in code](nowhere.md)\n```\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert broken_links(page) == ["page.md: missing.md (no such file)",
                                      "page.md: other.md#nothing (no heading #nothing)",
                                      "page.md: img.png (no such file)"]
    finally:
        REPO = saved


def test_readme_fits_a_screen_or_two_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    assert "make demo" in readme and "make test" in readme  # the two set-up commands


def test_development_page_names_every_module():
    page = (REPO / "docs" / "development.md").read_text()
    package = REPO / "src" / "lnpeft"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name == "__init__.py" or "grad_sample" in rel.parts:
            continue  # wings are named by their folder; the kernels have a README of their own
        assert f"`{rel.as_posix()}`" in page, f"docs/development.md does not describe {rel}"
