"""The docs hold together: the README's links lead somewhere, it stays a front door, and the
architecture page names every module of the package (the old README's layout table had silently
dropped five)."""

from __future__ import annotations

import re

from tests.helpers import ROOT

PACKAGE = ROOT / "lungseg"


def test_the_readme_is_a_front_door_whose_links_lead_somewhere() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links if "://" not in link), links
    for command in ("make demo", "make test"):
        assert command in text


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ]
    # a module is named by its path, or as one of several files of a row (`lungseg/x/`, `a.py`,
    # `b.py`)
    missing = [
        m
        for m in modules
        if m not in page
        and f"`{m.rsplit('/', 1)[1]}`" not in page
        and f"`{m.rsplit('/', 1)[0]}/`" not in page
    ]
    assert not missing, f"docs/architecture.md does not say where these live: {missing}"
