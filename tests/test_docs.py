"""The documentation: a short README, pages by topic, and no broken relative link anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
LINKED_FROM = [REPO / "README.md", *PAGES, REPO / "results" / "README.md", REPO / "bench" / "RESULTS.md",
               REPO / "src" / "lnpeft" / "analysis" / "grad_sample" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but `-` and `_` dropped, spaces as
    hyphens (`## The `pack_size` key` -> `the-pack_size-key`)."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; GitHub numbers a repeated one: `#x`, `#x-1`, `#x-2`."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a `#` in a code block is no heading
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


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
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n\n## A section\n\n### The `pack_size` key\n")
    page.write_text("[ok](other.md#a-section) [code](other.md#the-pack_size-key) [again](other.md#a-section-1) [third](other.md#a-section-2) "
                    "[file](missing.md) [anchor](other.md#nothing) "
                    "![img](img.png) [web](https://example.org)\n```\n[in code](nowhere.md)\n```\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert broken_links(page) == ["page.md: other.md#a-section-2 (no heading #a-section-2)",
                                      "page.md: missing.md (no such file)",
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


def schema_keys(node: dict, prefix: str = "") -> list[str]:
    """Every key of the config schema, dotted (`training.pack_size`), parents before children."""
    keys = []
    for name, sub in node.get("properties", {}).items():
        keys.append(prefix + name)
        keys += schema_keys(sub, prefix + name + ".")
    return keys


def documented_keys(text: str) -> set[str]:
    """The dotted names a page writes in backticks, `a.{b,c}` read as `a.b` and `a.c`."""
    names = set()
    for token in re.findall(r"`([a-z_][\w.{},<>*]*)`", text):
        pieces = [""]
        for part in re.split(r"(\{[^}]*\})", token):
            options = part[1:-1].split(",") if part.startswith("{") else [part]
            pieces = [p + o for p in pieces for o in options]
        names.update(pieces)
    return names


def test_configuration_page_names_every_config_key():
    """docs/configuration.md describes every key of the schema, so a new key needs a line there."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    documented = documented_keys((REPO / "docs" / "configuration.md").read_text())
    missing = [key for key in schema_keys(schema)
               if key not in documented and not any(d.startswith(key + ".") for d in documented)]
    assert missing == [], f"docs/configuration.md does not name {missing}"
    assert {"training.recipe", "resources.shape"} <= documented_keys("`training.recipe` `resources.{margin,shape}`")


def test_models_page_maps_components_as_the_architecture_table_does():
    """docs/models.md's component table is ARCHITECTURES written out: every module it names holds
    that component in that family, and every family is one of its columns."""
    from dataclasses import replace

    from lnpeft.model.architectures import ARCHITECTURES, COMPONENTS

    columns = {"bert": ("bert", "roberta", "xlm-roberta", "electra"), "deberta-v2": ("deberta-v2",),
               "distilbert": ("distilbert",), "modernbert": ("modernbert",),
               "llama": ("llama", "mistral", "qwen2", "gemma"), "gemma2": ("gemma2", "gemma3_text"),
               "gpt2": ("gpt2",)}
    assert sorted(t for ts in columns.values() for t in ts) == sorted(ARCHITECTURES)
    for model_type, same in columns.items():  # one column, one mapping: only the base model and biases differ
        for other in same:
            assert (replace(ARCHITECTURES[other], base="", bias_switches=(), packable=True)
                    == replace(ARCHITECTURES[model_type], base="", bias_switches=(), packable=True))
    page = (REPO / "docs" / "models.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w.]+)` \|(.+)\|$", page, re.M)}
    assert sorted(rows) == sorted(COMPONENTS)
    for component, line in rows.items():
        cells = [c.strip() for c in line.split("|")]
        assert len(cells) == len(columns), line
        for model_type, cell in zip(columns, cells):
            arch = replace(ARCHITECTURES[model_type], n_layers=12)
            names = [arch.param_name(layer, component, "weight") for layer in (5, 11)]
            names += [f"{arch.base}.{arch.layer_path}.5.{m}.weight" for c, m in arch.renames if c == component]
            for module in re.findall(r"`([\w.]+)`", cell):
                assert any(f".{module}.weight" in name for name in names), (component, model_type, module)
            if any(p.parts > 1 for p in arch.pieces(names[0])):  # a fused tensor: which row block
                piece = next(p for p in arch.pieces(names[0]) if p.component == component)
                axis = "column" if piece.dim == 1 else "row"
                assert f"{axis} block {piece.part + 1} of {piece.parts}" in cell, (component, model_type)
