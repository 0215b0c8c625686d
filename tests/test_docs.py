"""The README and docs/: every relative link and image resolves to a file of the repository; docs/tests.md names
every test file."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")   # [text](target) and ![alt](target)


def relative_targets(page: Path) -> list[str]:
    """The link targets of a page that point into the repository (no URL, no in-page anchor)."""
    targets = [match.group(1) for match in LINK.finditer(page.read_text())]
    return [target.split("#")[0] for target in targets if not re.match(r"[a-z]+:|#", target)]


def test_the_link_pattern_finds_links_and_images(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](docs/a.md#part), ![fig](../Figures/x.png) and [web](https://example.org), [here](#top).")
    assert relative_targets(page) == ["docs/a.md", "../Figures/x.png"]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_relative_link_and_image_resolves(page):
    missing = [target for target in relative_targets(page) if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_readme_is_a_front_page_that_links_every_system_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in ROOT.glob("docs/*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_the_tests_page_names_every_test_file():
    page = (ROOT / "docs/tests.md").read_text()
    unnamed = [path.name for path in sorted((ROOT / "tests").glob("*.py")) if f"`{path.name}`" not in page]
    assert not unnamed, f"docs/tests.md does not name {unnamed}"
