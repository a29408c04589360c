"""A PDF's text, page by page: its text layer (pypdfium2), its ruled tables as Markdown
(tasks.corpus.formats.pdf_tables) and OCR for pages without text (tasks.corpus.formats.ocr).

Pages and their text are loaded through pypdfium2's raw PDFium calls: its helper objects
(weak-reference finalizers on every page and text page) cost ~45 us a 3-page PDF (~5% of reading
it), what looking for tables on each page costs; ``page_text`` returns what pypdfium2's
``get_text_range()`` does (tests/tasks/corpus/formats/test_pdf_tables.py compares them).
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

from tasks.corpus.formats.extract import MOVE, REMOVE, Extracted, Unreadable, _pdf_date
from tasks.corpus.formats.ocr import PROGRESS_EVERY, SCALE, logger, ocr_image
from tasks.corpus.formats.pdf_tables import PageTables, ruled
from tasks.params.groups import OcrMode


def pdf(name: str, data: bytes, mode: OcrMode = "auto") -> Extracted:
    """A PDF's text layer, page by page, ruled tables as Markdown; pages without text
    (``auto``: those holding an image; ``force``: every page) are read with OCR and listed in
    ``ocr_pages``."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    document = open_pdf(name, data)
    tables = PageTables(data)
    texts: list[str] = []
    done: list[int] = []
    started = last = time.monotonic()
    try:
        total = len(document)
        for index in range(total):
            handle = raw.FPDF_LoadPage(document.raw, index)
            if not handle:
                raise pdfium.PdfiumError("Failed to load page.")
            try:
                text = page_text(raw, handle).replace("\r\n", "\n").strip()
                if mode == "force" or (mode == "auto" and not text and _has_image(document, index)):
                    page = document[index]
                    text = ocr_image(page.render(scale=SCALE).to_pil()).strip()
                    page.close()
                    done.append(index + 1)
                    if time.monotonic() - last > PROGRESS_EVERY:
                        last = time.monotonic()
                        logger().info(
                            "OCR of %s: page %d of %d (%.2f pages/s)",
                            name,
                            index + 1,
                            total,
                            len(done) / (last - started),
                        )
                elif text and ruled(handle):  # lines or boxes drawn: its tables as Markdown
                    text = _with_tables(name, tables, index) or text
            finally:
                raw.FPDF_ClosePage(handle)
            texts.append(text)
        meta = document.get_metadata_dict(skip_empty=True)
    except pdfium.PdfiumError as exc:
        raise Unreadable(f"file {name!r} is not a readable PDF ({exc}); {MOVE}") from exc
    finally:
        document.close()
        tables.close()
    text = "\n\n".join(texts)
    if not text.strip() and mode == "off":
        raise Unreadable(
            f"file {name!r} has no text layer and ocr='off'; set the flow parameter ocr to "
            f"'auto' to read its pages with OCR {REMOVE}"
        )
    if not text.strip():
        raise Unreadable(
            f"file {name!r} has no text: no text layer, and OCR found none on its pages; "
            f"check it is a document {REMOVE}"
        )
    return Extracted(
        text=text,
        format="pdf",
        title=meta.get("Title"),
        author=meta.get("Author"),
        date=_pdf_date(meta.get("CreationDate")),
        pages=len(texts),
        ocr_pages=",".join(map(str, done)) or None,
    )


def page_text(raw: Any, page: Any) -> str:
    """The text layer of a raw PDFium page, as pypdfium2's ``get_text_range()`` gives it (chars
    PDFium leaves out of its text at either end are skipped, crbug.com/pdfium/2079)."""
    import pypdfium2 as pdfium

    textpage = raw.FPDFText_LoadPage(page)
    if not textpage:
        raise pdfium.PdfiumError("Failed to load text page.")
    try:
        text_index = raw.FPDFText_GetTextIndexFromCharIndex
        first, last = 0, raw.FPDFText_CountChars(textpage) - 1
        while first <= last and text_index(textpage, first) == -1:
            first += 1
        while last >= first and text_index(textpage, last) == -1:
            last -= 1
        if first > last:
            return ""
        buffer = (
            ctypes.c_ushort * (text_index(textpage, last) + 2 - text_index(textpage, first))
        )()
        written = raw.FPDFText_GetText(textpage, first, last - first + 1, buffer)
        return memoryview(buffer)[: max(written - 1, 0)].tobytes().decode("utf-16-le", "ignore")
    finally:
        raw.FPDFText_ClosePage(textpage)


def _has_image(document: Any, index: int) -> bool:
    """Whether page ``index`` holds an image (a scan to OCR)."""
    import pypdfium2.raw as raw

    page = document[index]
    try:
        return any(True for _ in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE]))
    finally:
        page.close()


def _with_tables(name: str, tables: PageTables, index: int) -> str | None:
    """Page ``index``'s text with its tables as Markdown, or None (no table found, or
    pdfplumber could not read the page: then pypdfium2's text stands, logged)."""
    try:
        return tables.text(index)
    except Exception as exc:  # pdfminer's own errors on a page PDFium reads
        logger().warning(
            "tables of %s, page %d not read (%s): its text as it is", name, index + 1, exc
        )
        return None


def open_pdf(name: str, data: bytes) -> Any:
    """A pypdfium2 document; Unreadable (encrypted, damaged) when it cannot be opened."""
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise Unreadable(
                f"file {name!r} is an encrypted PDF (it needs a password); save an unencrypted "
                f"copy {REMOVE}"
            ) from exc
        raise Unreadable(f"file {name!r} is not a readable PDF ({exc}); {MOVE}") from exc
