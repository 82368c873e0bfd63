"""Render a report :class:`~mdfr.report.doc.Document` as one self-contained HTML page.

Self-contained means the page can be mailed or opened from any folder: the style is inline
and every image is embedded as a base64 ``data:`` URI, so nothing is fetched from disk or
network.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from mdfr.report.doc import Bullets, Document, Gallery, Heading, Image, Para, Table

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 0.5em 0 1.5em; }
figcaption { font-style: italic; font-size: 0.9em; }
code { background: #f6f6f6; padding: 0 0.2em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.gallery figure { flex: 1 1 300px; max-width: 360px; }
"""


def _inline(text: str) -> str:
    # The only inline markup reports use: `code` and **bold**.
    parts = re.split(r"`([^`]*)`", text)
    return "".join(
        f"<code>{html.escape(p)}</code>"
        if i % 2
        else re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(p))
        for i, p in enumerate(parts)
    )


def _img_src(root: Path, rel: str) -> str:
    data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _figure(b: Image, root: Path) -> str:
    cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
    return f'<figure><img alt="{html.escape(b.alt)}" src="{_img_src(root, b.path)}">{cap}</figure>'


def to_html(doc: Document, root: Path) -> str:
    """The page; images are read from ``root / image.path`` and inlined."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title.replace('`', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_inline(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        if isinstance(b, Heading):
            lvl = min(max(2, b.level), 6)
            out.append(f"<h{lvl}>{_inline(b.text)}</h{lvl}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows
            )
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Image):
            out.append(_figure(b, root))
        elif isinstance(b, Gallery):
            out.append(
                '<div class="gallery">' + "".join(_figure(i, root) for i in b.images) + "</div>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"
