"""Report building blocks that several services use: a section type, HTML tables and figures.

The modeler assembles the run's one-file HTML report; other stages (the GPU worker's CNN
metrics and Grad-CAM) contribute :class:`ReportSection` objects built from the same helpers, so
every table and figure looks alike and the report stays one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure


@dataclass
class ReportSection:
    """An extra report section: a title, HTML, and figures (matplotlib or PNG bytes) + captions."""

    title: str
    html: str = ""
    figures: Sequence[tuple[Figure | bytes, str]] = field(default_factory=list)


def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def fmt_p(p: float | None) -> str:
    """p-value as the paper prints it (< 0.001 below a thousandth)."""
    if p is None or not np.isfinite(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(value: float, low: float, high: float, digits: int = 3) -> str:
    """'0.788 (0.700–0.876)'; '-' when the value is undefined."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1,
               groups: dict[int, str] | None = None,
               top: list[tuple[str, int]] | None = None, css: str = "paper") -> str:
    """An HTML table in the paper's style; ``groups`` inserts bold rows before row indices."""
    out = [f'<table class="{css}"><thead>']
    if top:
        out.append("<tr>" + "".join(f'<th colspan="{n}">{esc(t)}</th>' for t, n in top) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        if groups and i in groups:
            out.append(f'<tr class="group"><td colspan="{len(header)}">{esc(groups[i])}</td></tr>')
        cells = [f'<td class="num">{esc(c)}</td>' if j >= numeric_from else f"<td>{esc(c)}</td>"
                 for j, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def png_bytes(fig: Figure, dpi: int = 100, tight: bool = False) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def png_base64(fig: Figure | bytes, dpi: int = 100) -> str:
    """A figure (or PNG bytes) as base64, for an ``<img src="data:image/png;base64,...">``."""
    data = fig if isinstance(fig, bytes) else png_bytes(fig, dpi)
    if isinstance(fig, Figure):
        import matplotlib.pyplot as plt

        plt.close(fig)
    return base64.b64encode(data).decode("ascii")


def figure_html(fig: Figure | bytes, caption: str, css: str = "") -> str:
    """A ``<figure>`` with the image embedded as base64 PNG and its caption."""
    cls = f' class="{css}"' if css else ""
    return (f'<figure{cls}><img alt="{esc(caption)}" src="data:image/png;base64,'
            f'{png_base64(fig)}"><figcaption>{esc(caption)}</figcaption></figure>')
