"""The documentation's links lead somewhere: every relative link of README.md and docs/*.md names a file of the repo,
and a `#anchor` a heading of that page (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens, a
repeated heading's -1, -2 ...). The README was split into docs/ pages (session 49): a moved or renamed section left a
link to nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(page: Path) -> list[str]:
    """The page's lines outside code blocks."""
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line.lstrip()):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page):
        if not (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(page: Path) -> list[str]:
    return [m.group(1) for line in prose(page) for m in LINK.finditer(line)]


def broken(page: Path) -> list[str]:
    """The page's relative links whose file or heading does not exist, each with why."""
    said = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not this repo's
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            said.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            said.append(f"{target}: {file.name} has no heading #{anchor}")
    return said


def test_a_link_to_nowhere_is_found(tmp_path):
    """GitHub's anchors (a code span's backticks dropped, its hyphens kept; a repeated heading's -1), and the three
    ways a link breaks."""
    (tmp_path / "other.md").write_text("# Other\n## `--sbatch-arg`\n## Choosing a backend\n## Choosing a backend\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[a](other.md#--sbatch-arg) [b](other.md#choosing-a-backend-1) [c](#page) [d](https://x.org/#y)\n"
        "```\n[not a link](gone.md)\n```\n[e](gone.md) [f](other.md#sbatch-arg) [g](#nowhere)\n"
    )
    assert broken(page) == [
        "gone.md: no such file",
        "other.md#sbatch-arg: other.md has no heading #sbatch-arg",
        "#nowhere: page.md has no heading #nowhere",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert not broken(page), f"{page.relative_to(REPO)}: " + "; ".join(broken(page))
