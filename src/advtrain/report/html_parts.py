"""The building blocks of advtrain's self-contained HTML pages (the comparison report and the audit card): the
inline CSS, escaping, figures as base64 PNG ``data:`` URIs, sections and tables. Each returns a string; a page is
the concatenation of what they return."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1a1a1a; max-width: 1240px; margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
caption { caption-side: top; text-align: left; color: #444; padding-bottom: 0.4em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.warn { background: #fde2e1; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; max-width: 60em; }
"""


def escape(text: object) -> str:
    return html.escape(str(text))


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return png_uri(buffer.getvalue())


def html_figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'


def html_section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str, table_id: str = "") -> str:
    """An HTML table; the first column is a row header, the others are right-aligned numbers. Cells given as
    (text, css class) pairs get that class (e.g. "warn")."""

    def cell(value: object) -> str:
        text, css = value if isinstance(value, tuple) else (value, "")
        return f'<td class="num {css}">{escape(text)}</td>'

    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join(f'<tr><th scope="row">{escape(r[0])}</th>{"".join(cell(v) for v in r[1:])}</tr>\n' for r in rows)
    attr = f' id="{escape(table_id)}"' if table_id else ""
    return (f"<table{attr}><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}</tbody></table>")
