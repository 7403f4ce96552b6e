"""Untrusted text made inert for display: model output, knowledge-base passages, persona and eval text never become
HTML, and never load or link anything.

Two strengths, one place:
- `inert_markdown(text)` for model answers shown as chat Markdown: formatting (lists, emphasis, code) still renders,
  but outside code no `<` can open a tag and no `[`/`]` can make a link or an image (`![x](http://host/?q=...)`
  through a knowledge-base document would otherwise be fetched by every browser that shows the answer), and bare
  URLs are shown as code so that nothing is linkified. Code blocks and spans stay exactly as written: Markdown shows
  their content literally, so `<b>` in a code block reads `<b>`.
- `md_text(text)` for short untrusted values put into our own Markdown (titles, reasons, table cells): every
  Markdown and HTML control character is escaped, so it reads exactly as the text. `md_table` lays such cells out.
Gradio's own sanitiser (`sanitize_html=True`) still runs after both, as a second layer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>:/])")  # ":" and "/" too: no bare URL is linkified
# Fenced code blocks (``` or ~~~, to the closing fence or the end) and inline code spans (matching backtick runs).
_CODE = re.compile(r"(?P<fence>^[ \t]*(?P<mark>`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*(?P=mark)[ \t]*$|\Z))"
                   r"|(?P<span>(?P<ticks>`+).+?(?P=ticks))", re.MULTILINE | re.DOTALL)  # fmt: skip
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>`]+|\bwww\.[^\s<>`]+", re.IGNORECASE)


def md_text(text: str) -> str:
    """Untrusted text as literal Markdown: HTML escaped, then every Markdown control character backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def md_code(text: str) -> str:
    """Text as a Markdown code span (shown verbatim), fenced by more backticks than it contains."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if fence != "`" else f"`{text}`"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines from cells that are already Markdown (escape untrusted ones with `md_text`); a line
    break inside a cell would end its row, so it becomes a space."""
    lines = (headers, ["---"] * len(headers), *rows)
    return [f"| {' | '.join(' '.join(cell.splitlines()) for cell in line)} |" for line in lines]


def _inert_prose(text: str) -> str:
    """Prose outside code: no tags, no links or images, URLs as code."""
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    text = text.replace("[", "\\[").replace("]", "\\]")
    return _URL.sub(lambda match: md_code(match.group(0)), text)


def inert_markdown(text: str) -> str:
    """Model output as Markdown that renders formatting but no HTML, links, images or remote content."""
    pieces: list[str] = []
    position = 0
    for match in _CODE.finditer(text):
        pieces += [_inert_prose(text[position : match.start()]), match.group(0)]
        position = match.end()
    pieces.append(_inert_prose(text[position:]))
    return "".join(pieces)
