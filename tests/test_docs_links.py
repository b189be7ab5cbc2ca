"""The documents hold together: README is a short front page that links every docs page, and no
relative link in README.md or docs/*.md points at a file that is not there.

Plain text checks only (no project imports, no subprocess): fast enough to run with every change.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 210
FIRST_SCREEN_LINES = 40
# The pages README hands everything else to; each must exist and be linked from README.
PAGES = ("docs/usage.md", "docs/operations.md", "docs/design.md", "docs/methods.md", "docs/RESULTS.md",
         "docs/SCALING.md")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)


def link_targets(text: str) -> list[str]:
    """Every link target of a Markdown text, outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_LINK) for m in pattern.finditer(text)]


def relative_files(text: str) -> list[str]:
    """The relative file targets: no http(s)/mailto links, no pure #anchors, the #anchor cut off."""
    files = []
    for target in link_targets(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        files.append(target.split("#", 1)[0].split("?", 1)[0])
    return files


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_the_extractor_finds_links_and_skips_code():
    sample = ("See [the results](docs/RESULTS.md#how-sure) and ![plot](docs/bench/a.png \"title\").\n"
              "[web](https://example.org) [here](#usage) `[not](a-link.md)`\n"
              "```\n[inside](code.md)\n```\n[ref]: docs/usage.md\n")
    assert relative_files(sample) == ["docs/RESULTS.md", "docs/bench/a.png", "docs/usage.md"]
    # on the real README: it must see the links this test relies on
    found = relative_files(README.read_text())
    assert "docs/RESULTS.md" in found
    assert "docs/bench/scenarios_full_supervised.png" in found


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(document):
    missing = sorted({target for target in relative_files(document.read_text())
                      if not (document.parent / target).exists()})
    assert missing == [], f"{document.relative_to(ROOT)} links to files that are not there: {missing}"


def test_readme_is_a_short_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    first_screen = "\n".join(lines[:FIRST_SCREEN_LINES])
    assert "make run" in first_screen and "make test" in first_screen


def test_readme_links_every_docs_page():
    linked = {(ROOT / target).resolve() for target in relative_files(README.read_text())}
    for page in PAGES:
        assert (ROOT / page).is_file(), f"{page} is missing"
        assert (ROOT / page).resolve() in linked, f"README.md does not link {page}"
