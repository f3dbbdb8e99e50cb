"""The training corpus of the default model: the English prose of Rust's documentation.

rustup installs the documentation with every toolchain (the `rust-docs` component): each mdBook as one
`print.html`, and the standard library's API pages (`std/**/*.html`). The Rust project licenses it under Apache-2.0 OR MIT (the embedded book adds
CC-BY-SA-4.0 as a third choice); `share/doc/rust/COPYRIGHT.html` next to it says so. We keep prose
only: code blocks, tables and navigation are dropped, and so is every paragraph that is not a sentence
of at least MIN_WORDS words.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BOOKS = ("book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book", "cargo", "rustc",
         "rustdoc", "style-guide", "clippy", "error_codes", "unstable-book")
API = "std"  # one section per page, titled by the page's first heading
MIN_WORDS = 6
SKIPPED_TAGS = {"pre", "script", "style", "nav", "table", "svg", "button"}
BLOCK_TAGS = {"p", "li", "dd", "dt", "blockquote", "div", "h1", "h2", "h3", "h4", "h5", "h6"}
HEADINGS = {"h1", "h2", "h3", "h4"}
# typographic quotes as the ASCII a user types
ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})


@dataclass
class Section:
    book: str
    heading: str
    paragraphs: list[str] = field(default_factory=list)


class _BookParser(HTMLParser):
    """Text blocks inside <main>, split into sections at headings."""

    def __init__(self, book: str):
        super().__init__()
        self.book, self.sections = book, [Section(book, "")]
        self.main = self.skip = 0
        self.buf: list[str] = []
        self.in_heading = False

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.main += 1
        elif tag in SKIPPED_TAGS:
            self.skip += 1
        if tag in BLOCK_TAGS:
            self._flush()
            self.in_heading = tag in HEADINGS

    def handle_endtag(self, tag):
        if tag == "main":
            self.main -= 1
        elif tag in SKIPPED_TAGS:
            self.skip = max(0, self.skip - 1)
        if tag in BLOCK_TAGS:
            self._flush()

    def handle_data(self, data):
        if self.main and not self.skip:
            self.buf.append(data)

    def _flush(self):
        text = " ".join("".join(self.buf).translate(ASCII).split())
        self.buf = []
        if not text:
            return
        if self.in_heading:
            self.sections.append(Section(self.book, text))
            self.in_heading = False
        elif is_prose(text):
            self.sections[-1].paragraphs.append(text)


def is_prose(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS and text[-1] in ".?!:" and text[0].isupper()


def docs_dir(explicit: Path | None = None) -> Path:
    """`share/doc/rust/html` of the active toolchain (or `explicit`)."""
    if explicit is None:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout
        explicit = Path(sysroot.strip()) / "share" / "doc" / "rust" / "html"
    if not (explicit / "book" / "print.html").exists():
        raise FileNotFoundError(f"no Rust documentation at {explicit} (rustup component add rust-docs)")
    return explicit


def _parse(book: str, page: Path) -> list[Section]:
    parser = _BookParser(book)
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    parser._flush()
    return parser.sections


def read_sections(html_dir: Path) -> list[Section]:
    """Every section with at least one prose paragraph: the books in order, then the API pages sorted by
    path; a paragraph seen before is dropped."""
    found = [s for book in BOOKS for s in _parse(book, html_dir / book / "print.html")]
    for page in sorted((html_dir / API).rglob("*.html")):
        sections = _parse(API, page)
        title = next((s.heading for s in sections if s.heading), page.stem)
        found.append(Section(API, title, [p for s in sections for p in s.paragraphs]))
    out, seen = [], set()
    for section in found:
        section.paragraphs = [p for p in section.paragraphs if not (p in seen or seen.add(p))]
        if section.paragraphs:
            out.append(section)
    return out


def docs_version(html_dir: Path) -> str:
    """'Rust 1.95.0 (59807616e)' from the documentation's version page."""
    page = (html_dir / "version_info.html").read_text(encoding="utf-8")
    words = " ".join(re.sub(r"<[^>]*>", " ", page).split()).split()
    i = words.index("Rust")
    return f"Rust {words[i + 1]} ({words[i + 2]})"
