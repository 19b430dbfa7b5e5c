"""The README and docs/: every relative link and image points at a file that exists (and, for a link into
a Markdown page, at a heading that exists), and the code and docs speak of the project, not of issue numbers."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def headings(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors = set()
    for title in re.findall(r"^#+ +(.+?) *$", text, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    return anchors


def relative_links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not files here
            yield target


def test_the_pages_exist_and_link_to_each_other():
    assert {p.name for p in PAGES} >= {"README.md", "results.md", "tuning.md", "design.md"}
    readme_links = set(relative_links(REPO / "README.md"))
    for page in ("docs/results.md", "docs/tuning.md", "docs/design.md", "benchmarks/README.md"):
        assert any(link.split("#")[0] == page for link in readme_links), f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_exists(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in headings(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_no_issue_numbers_in_code_or_docs():
    """Files tracked by git (the measured result files excepted: they record what was run) never refer to
    an issue number: the reader of the code has the code, not the tracker."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"\bissues? ?#?\d+", re.I)
    hits = []
    for name in files:
        path = REPO / name
        if name.startswith("benchmarks/results/") or not path.is_file() or path.suffix not in (
                ".py", ".md", ".yaml", ".yml", ".txt", ".ini", ".toml", ".cfg", "") or name == "tests/test_docs.py":
            continue
        for i, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits)
