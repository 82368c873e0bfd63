"""A tiny document model for reports, rendered to Markdown here and to HTML in ``html.py``.

Building the report once as blocks, then rendering twice, keeps ``report.md`` and
``report.html`` saying exactly the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    """A PNG under the report folder (``path`` is relative to it)."""

    path: str
    alt: str
    caption: str = ""


@dataclass
class Gallery:
    """Images shown side by side in HTML (one after the other in Markdown)."""

    images: list[Image]


Block = Heading | Para | Bullets | Table | Image | Gallery


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


def _cell(text: str) -> str:
    # A pipe would split the Markdown cell; a newline would end the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    """GitHub-flavoured Markdown; images are links to the PNG files beside ``report.md``."""
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * max(2, b.level)} {b.text}", ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_cell(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image | Gallery):
            for img in b.images if isinstance(b, Gallery) else [b]:
                out += [f"![{img.alt}]({img.path})", ""]
                if img.caption:
                    out += [f"*{img.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"
