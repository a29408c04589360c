"""Tables of PDF pages as Markdown tables, in reading order with the page's text.

pypdfium2 (the PDF reader) finds no tables, and pdfplumber's table finder (pdfminer.six
underneath) costs ~30x pypdfium2's text on a page (~9 ms against ~0.3 ms). So a page is searched
only when it draws lines or boxes: ``ruled`` counts the segments of its path objects with PDFium
(~1 us an object on the page, ~10 us on a page of text), and only a page with enough of them (a
grid needs two boxes or five lines) is read by pdfplumber, whose ``find_tables`` (ruling lines)
finds the tables there. A page without a table found keeps pypdfium2's text unchanged. Chosen
over PyMuPDF's ``find_tables`` (a port of the same algorithm, AGPL, ~70x slower here) by
measurement (docs/guide/corpora-of-files.md, "PDF tables").
"""

from __future__ import annotations

import io
from typing import Any

from tasks.corpus.formats.markdown import markdown_table

MIN_SEGMENTS = 10  # path segments on a page before it is searched: two boxes, or five lines
_FORM_DEPTH = 2  # form XObjects (drawings reused as one object) looked into this deep


def ruled(page: Any) -> bool:
    """Whether a raw PDFium page (``FPDF_LoadPage``'s, or a pypdfium2 page's ``.raw``) draws
    enough lines or boxes to hold a ruled table."""
    import pypdfium2.raw as raw

    count, get = raw.FPDFPage_CountObjects, raw.FPDFPage_GetObject
    return _segments(raw, page, count, get, 0) >= MIN_SEGMENTS


def _segments(raw: Any, handle: Any, count: Any, get: Any, depth: int) -> int:
    """Path segments of a page's (or a form's) objects, counted up to MIN_SEGMENTS. Two ctypes
    calls an object (~0.6 us each) are the whole cost on a page of text."""
    kind_of, path, form = raw.FPDFPageObj_GetType, raw.FPDF_PAGEOBJ_PATH, raw.FPDF_PAGEOBJ_FORM
    objects = [get(handle, index) for index in range(count(handle))]
    kinds = [kind_of(obj) for obj in objects]
    if path not in kinds and form not in kinds:  # a page of text (and images): done
        return 0
    total = 0
    for obj, kind in zip(objects, kinds, strict=True):
        if kind == path:
            total += max(raw.FPDFPath_CountSegments(obj), 0)
        elif kind == form and depth < _FORM_DEPTH:
            total += _segments(
                raw, obj, raw.FPDFFormObj_CountObjects, raw.FPDFFormObj_GetObject, depth + 1
            )
        if total >= MIN_SEGMENTS:
            break
    return total


class PageTables:
    """One PDF's pages with their tables as Markdown; pdfplumber opens it at the first page
    asked for, so a PDF without a ruled page never pays for it."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pdf: Any = None

    def text(self, index: int) -> str | None:
        """Page ``index``'s text with its tables as Markdown, in reading order (top to bottom);
        None when no table (two rows and two columns at least) is found there."""
        if self._pdf is None:
            import pdfplumber

            self._pdf = pdfplumber.open(io.BytesIO(self._data))
        page = self._pdf.pages[index]
        tables = [(t.bbox, rows) for t in page.find_tables() if _is_table(rows := t.extract())]
        if not tables:
            return None
        outside = page
        for bbox, _ in tables:
            outside = outside.outside_bbox(bbox)
        blocks: list[tuple[float, int, str]] = [
            (line["top"], 0, line["text"])
            for line in outside.extract_text_lines(return_chars=False)
        ]
        blocks += [(bbox[1], 1, "\n" + markdown_table(rows) + "\n") for bbox, rows in tables]
        blocks.sort(key=lambda block: (block[0], block[1]))
        return "\n".join(text for _, _, text in blocks).strip()

    def close(self) -> None:
        """pdfplumber's file, when it was opened."""
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None


def _is_table(rows: list[list[str | None]]) -> bool:
    """At least two rows and two columns with text in some cell (a box around a paragraph is a
    one-cell "table" to pdfplumber, and stays text)."""
    return (
        len(rows) >= 2
        and max((len(row) for row in rows), default=0) >= 2
        and any(cell and cell.strip() for row in rows for cell in row)
    )


__all__ = ["PageTables", "ruled"]
