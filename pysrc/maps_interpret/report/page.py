"""The report's HTML: one file, every image embedded (data: URIs), no script and nothing fetched, so that it
opens offline, from a cluster's scratch copied to a laptop, or attached to an e-mail. The layout reads on a
laptop screen: figures two abreast from 1000 px of width, one under the other below."""

from __future__ import annotations

import base64
import html
from typing import Iterable, Optional, Sequence

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fff}
header{background:#1f3b57;color:#fff;padding:0.8em 1.5em}
header h1{margin:0;font-size:1.35em} header p{margin:0.3em 0 0 0;font-size:0.9em;opacity:0.9}
nav{position:sticky;top:0;background:#f2f4f7;border-bottom:1px solid #d5d9e0;padding:0.4em 1.5em;z-index:1}
nav a{margin-right:1.2em;color:#1f3b57;text-decoration:none;font-size:0.92em}
main{padding:0 1.5em 2em 1.5em;max-width:1500px}
h2{border-bottom:2px solid #1f3b57;padding-bottom:0.15em;margin-top:1.4em;font-size:1.2em}
h3{font-size:1.02em;margin:1em 0 0.4em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:0.8em 1.2em}
figure{margin:0;border:1px solid #e1e4e8;border-radius:4px;padding:0.4em;background:#fafbfc}
figcaption{font-size:0.85em;margin:0 0 0.3em 0;color:#333}
figure img{width:100%;height:auto;display:block} figure.natural img{width:auto;max-width:100%}
table{border-collapse:collapse;font-size:0.88em;margin:0.4em 0}
td,th{border:1px solid #d5d9e0;padding:0.25em 0.6em;text-align:left;vertical-align:top}
th{background:#f2f4f7}
.pass{color:#0a7d32;font-weight:bold} .fail{color:#b3261e;font-weight:bold} .note{color:#555;font-size:0.88em}
code{font-size:0.92em}
"""


def escape(value) -> str:
    return html.escape(str(value))


def image(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}">'


def figure(png: bytes, caption: str, alt: str, natural: bool = False) -> str:
    """A figure with its caption above it: the caption belongs to the image under it, not to the one before.
    `natural`: drawn at its own size (a small chart), not stretched to the column's width."""
    css = ' class="natural"' if natural else ""
    return f"<figure{css}><figcaption>{caption}</figcaption>{image(png, alt)}</figure>"


def grid(items: Iterable[str]) -> str:
    return '<div class="grid">' + "".join(items) + "</div>"


def table(header: Optional[Sequence[str]], rows: Iterable[Sequence]) -> str:
    """Cells are HTML (escaped by the caller); `header` None: a key-value table, keys in its first column."""
    head = "" if header is None else "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
    cell = (lambda i, c: f"<th>{c}</th>" if header is None and i == 0 else f"<td>{c}</td>")
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def document(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The page: (anchor, heading, body HTML) per section, a sticky navigation bar linking them."""
    nav = "".join(f'<a href="#{anchor}">{escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{content}</section>'
                   for anchor, heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><header><h1>{escape(title)}</h1><p>{subtitle}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n")
