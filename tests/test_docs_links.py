"""The documentation holds together (issue 22): every relative link in README.md and docs/*.md points at a file of
the repository (and, with a ``#anchor`` into a markdown file, at one of its headings, by GitHub's slug rules), and
the README stays short enough to read in five minutes."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from tests.helpers import ROOT

README_MAX_LINES = 200
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto: ...


def documentation_files() -> list[Path]:
    """The files whose links are checked: the README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def unfenced_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def link_targets(text: str) -> list[str]:
    """Every link target of a markdown text: inline links and images ``[t](target)``, reference definitions;
    not in code blocks or code spans (a link shown as code is no link)."""
    targets = []
    for line in (INLINE_CODE.sub(" ", line) for line in unfenced_lines(text)):
        targets += INLINE_LINK.findall(line)
        targets += REFERENCE_DEF.findall(line)
    return targets


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (code marks, emphasis and link syntax dropped) in lower case,
    keeping letters, marks, digits, connector punctuation (``_``), spaces and hyphens; spaces become hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown text's headings; a repeated heading gets ``-1``, ``-2`` ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for line in unfenced_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return result


def broken_links(page: Path, root: Path) -> list[str]:
    """``"<page>: <target> (why)"`` for every relative link of ``page`` that does not resolve inside ``root``."""
    problems = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if not target or EXTERNAL.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page.resolve()
        where = f"{page.relative_to(root)}: {target}"
        if not path.is_relative_to(root.resolve()):
            problems.append(f"{where} (outside the repository)")
        elif not path.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = documentation_files()
    assert len(pages) > 3, pages
    problems = [problem for page in pages for problem in broken_links(page, ROOT)]
    assert not problems, "\n".join(problems)


def test_the_readme_has_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_github_slugs_of_headings_like_the_docs_ones():
    assert github_slug("The study (`make study`)") == "the-study-make-study"
    assert github_slug("The paper's recipe") == "the-papers-recipe"
    assert github_slug("§2 Information discarding: one σ map per image and checkpoint") == \
        "2-information-discarding-one-σ-map-per-image-and-checkpoint"
    assert github_slug("torch.compile") == "torchcompile"
    assert github_slug("Run folders: resume, overwrite, locks") == "run-folders-resume-overwrite-locks"
    assert github_slug("N_fg and **bold** [a link](x.md)") == "n_fg-and-bold-a-link"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1", "a-2"}


def test_the_check_reports_each_kind_of_broken_link_and_ignores_what_is_no_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine anchor](other.md#a-section) [own heading](#page) ![img](other.md)\n"
        "[missing](missing.md) [bad anchor](other.md#no-such-section) [own bad](#nowhere) [up](../../x.md)\n"
        "[external](https://example.org/missing.md) `[in code](nothing.md)`\n"
        "```\n[in a fence](nothing.md)\n```\n"
        "[ref]: gone/file.txt\n")
    problems = broken_links(page, tmp_path)
    assert problems == ["docs/page.md: missing.md (no such file)",
                        "docs/page.md: other.md#no-such-section (no heading with anchor #no-such-section)",
                        "docs/page.md: #nowhere (no heading with anchor #nowhere)",
                        "docs/page.md: ../../x.md (outside the repository)",
                        "docs/page.md: gone/file.txt (no such file)"], problems
