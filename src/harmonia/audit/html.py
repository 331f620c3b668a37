"""Tiny HTML builders for the audit report. Every string from data goes through `esc`."""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Iterable, Sequence

from harmonia.audit.media import data_uri

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8;line-height:1.45}
header{background:#1d2a44;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:22px}
header .meta{opacity:.85;font-size:13px}
nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;font-size:13px;position:sticky;top:0}
nav a{margin-right:16px;color:#1d5bbf;text-decoration:none}
main{padding:8px 32px 40px 32px;max-width:1320px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:14px 20px;margin:16px 0}
section h2{font-size:18px;margin:4px 0 8px 0}
p.note{color:#556;font-size:13px;margin:4px 0 10px 0}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.figs img{max-width:100%;border:1px solid #eee}
.figs.two img{width:calc(50% - 7px)}
.mis{color:#b3261e;font-weight:600}
table{border-collapse:collapse;font-size:13px}
table.suspects{width:100%}
th,td{border-bottom:1px solid #e4e7ec;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{color:#556;padding-right:18px}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.bad{background:#fde2e1;color:#a1160f}.ok{background:#dff3e4;color:#176c32}.unk{background:#eceef2;color:#445}
.caps{margin:0;padding-left:16px;font-size:12px;min-width:220px}
.strip{image-rendering:pixelated;height:60px}
audio{width:180px;height:30px}
.small{font-size:12px;color:#556}
"""


def esc(value: object) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def visible(text: str) -> str:
    """``text`` with its invisible characters (bidi overrides, zero-width, other format and
    control characters) spelt out as ``\\u202e``, so an id cannot display as another one."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cf", "Cc") else c for c in text
    )


def img(png: bytes, alt: str, css_class: str = "") -> str:
    """An <img> whose source is the PNG itself (data: URI)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img{cls} alt="{esc(alt)}" src="{data_uri("image/png", png)}">'


def audio_player(wav: bytes) -> str:
    """A playable <audio> element holding the WAV bytes."""
    return f'<audio controls preload="none" src="{data_uri("audio/wav", wav)}"></audio>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric: Sequence[int] = (),
    css_class: str = "",
) -> str:
    """A table; cells are trusted HTML (escape data before passing it), headers are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of escaped labels and values."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def section(anchor: str, title: str, body: str, note: str = "") -> str:
    """A titled report section with an id the navigation bar links to."""
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def page(title: str, meta: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; `sections` are (anchor, nav label, section HTML)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label, _ in sections)
    body = "".join(s for _, _, s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div class="meta">{meta}</div></header>'
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
