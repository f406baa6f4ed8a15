"""No dangling documentation links: every relative Markdown link and every docs/ path named in the workflow exists."""

import re

import pytest

from .conftest import REPO

DOCS = sorted(
    [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("config/*.md"), *REPO.glob("data/*.md")], key=str
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
NAMED = re.compile(r"\b((?:docs|config|profiles|workflow)/[\w./-]+\.(?:md|yaml|rst|py))")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_exist(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.relative_to(REPO)} links to {target}, which does not exist"


def test_files_named_by_the_workflow_exist():
    sources = [REPO / "Snakefile", REPO / "Makefile", *REPO.glob("workflow/**/*.smk"), *REPO.glob("profiles/*/*.yaml")]
    for source in sources:
        for name in NAMED.findall(source.read_text()):
            assert (REPO / name).exists(), f"{source.relative_to(REPO)} names {name}, which does not exist"


def test_licence_and_citation_match_the_project():
    import tomllib

    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["license"] == project["license"] and citation["version"] == project["version"]
    assert citation["preferred-citation"]["year"] == 2025 and citation["preferred-citation"]["volume"] == 36
    assert citation["references"][0]["doi"] == "10.24963/ijcai.2023/483"
