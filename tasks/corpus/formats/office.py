"""PowerPoint, Excel, OpenDocument, RTF, EPUB and reStructuredText: text and metadata.

Chosen by measurement on generated files (docs/guide/corpora-of-files.md, ``python -m benchmarks.extraction
--candidates``): one library per format against MarkItDown, which covers PPTX, XLSX and DOCX
through the same libraries (python-pptx, openpyxl via pandas, mammoth) plus a Markdown pass.
python-pptx (slides, tables and notes), openpyxl (read-only, values not formulas), lxml over the
OpenDocument XML (odfpy, the only ODF library, last released in 2020, walks the same XML slower),
striprtf (RTF control words), ebooklib (EPUB spine order) with lxml for each chapter's text.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from tasks.corpus.formats.extract import MOVE, Extracted, Unreadable, decode_text
from tasks.corpus.formats.markdown import markdown_table


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else None


def pptx(name: str, data: bytes) -> Extracted:
    """Each slide's text (tables as Markdown) under ``## Slide N``, then its notes."""
    from pptx import Presentation

    try:
        deck = Presentation(io.BytesIO(data))
    except Exception as exc:  # zipfile.BadZipFile, KeyError, lxml errors
        raise Unreadable(f"file {name!r} is not a readable PPTX ({exc}); {MOVE}") from exc
    parts: list[str] = []
    for number, slide in enumerate(deck.slides, 1):
        parts.append(f"## Slide {number}")
        parts += list(_shapes_text(slide.shapes))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                parts.append(f"Notes: {notes.text.strip()}")
    core = deck.core_properties
    return Extracted(
        text="\n\n".join(parts).strip(),
        format="pptx",
        title=core.title or None,
        author=core.author or None,
        date=_iso(core.created),
        pages=len(deck.slides),
    )


def _shapes_text(shapes: Any) -> Iterator[str]:
    for shape in shapes:
        if shape.shape_type == 6:  # a group: its shapes in turn
            yield from _shapes_text(shape.shapes)
        elif getattr(shape, "has_table", False) and shape.has_table:
            yield markdown_table([[c.text for c in row.cells] for row in shape.table.rows])
        elif getattr(shape, "has_text_frame", False) and shape.text_frame.text.strip():
            yield shape.text_frame.text.strip()


def xlsx(name: str, data: bytes) -> Extracted:
    """Each sheet as ``## Sheet: name`` and a Markdown table of its values."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:
        raise Unreadable(f"file {name!r} is not a readable XLSX ({exc}); {MOVE}") from exc
    try:
        parts = []
        for sheet in book.worksheets:
            table = markdown_table(sheet.iter_rows(values_only=True))
            if table:
                parts.append(f"## Sheet: {sheet.title}\n\n{table}")
        props = book.properties
        return Extracted(
            text="\n\n".join(parts),
            format="xlsx",
            title=props.title or None,
            author=props.creator or None,
            date=_iso(props.created),
            pages=len(book.worksheets),
        )
    finally:
        book.close()


_ODF = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "presentation": "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0",
    "dc": "http://purl.org/dc/elements/1.1/",
    "meta": "urn:oasis:names:tc:opendocument:xmlns:meta:1.0",
}


def odf(name: str, data: bytes, kind: str) -> Extracted:
    """An OpenDocument text, spreadsheet or presentation: paragraphs, tables as Markdown,
    slides (odp) under ``## Slide N`` and sheets (ods) under ``## Sheet: name``."""
    from lxml import etree

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            content = etree.fromstring(package.read("content.xml"))
            meta = (
                etree.fromstring(package.read("meta.xml"))
                if "meta.xml" in package.namelist()
                else None
            )
    except (zipfile.BadZipFile, KeyError, etree.XMLSyntaxError) as exc:
        raise Unreadable(f"file {name!r} is not a readable {kind.upper()} ({exc}); {MOVE}") from exc
    body = content.find("office:body", _ODF)
    parts: list[str] = list(_odf_blocks(body)) if body is not None else []

    def first(path: str) -> str | None:
        found = meta.findtext(path, namespaces=_ODF) if meta is not None else None
        return found.strip() if found and found.strip() else None

    slides = body.findall(".//draw:page", _ODF) if body is not None else []
    sheets = body.findall(".//table:table", _ODF) if body is not None else []
    return Extracted(
        text="\n\n".join(p for p in parts if p.strip()),
        format=kind,
        title=first(".//dc:title"),
        author=first(".//dc:creator") or first(".//meta:initial-creator"),
        date=first(".//meta:creation-date"),
        pages=len(slides) if kind == "odp" else len(sheets) if kind == "ods" else None,
    )


def _q(tag: str) -> str:
    prefix, local = tag.split(":")
    return f"{{{_ODF[prefix]}}}{local}"


def _odf_blocks(element: Any) -> Iterator[str]:
    """Paragraphs, headings, tables (as Markdown) and slides of an ODF body, in order."""
    for child in element:
        tag = child.tag
        if tag in (_q("text:p"), _q("text:h")):
            yield _odf_text(child)
        elif tag == _q("table:table"):
            label = child.get(_q("table:name"))
            rows = [
                [_odf_text(cell) for cell in row if cell.tag == _q("table:table-cell")]
                for row in child.iter(_q("table:table-row"))
            ]
            table = markdown_table(rows)
            if table:
                yield f"## Sheet: {label}\n\n{table}" if _in_spreadsheet(child) else table
        elif tag == _q("draw:page"):
            yield f"## Slide {len(list(child.itersiblings(preceding=True))) + 1}"
            yield from _odf_blocks(child)
        elif tag == _q("presentation:notes"):
            notes = "\n".join(_odf_text(p) for p in child.iter(_q("text:p")))
            if notes.strip():
                yield f"Notes: {notes.strip()}"
        else:
            yield from _odf_blocks(child)


def _in_spreadsheet(table: Any) -> bool:
    parent = table.getparent()
    return parent is not None and parent.tag == _q("office:spreadsheet")


def _odf_text(element: Any) -> str:
    """An element's text with ODF's spaces, tabs and line breaks restored."""
    out: list[str] = [element.text or ""]
    for child in element:
        if child.tag == _q("text:s"):
            out.append(" " * int(child.get(_q("text:c"), "1")))
        elif child.tag == _q("text:tab"):
            out.append("\t")
        elif child.tag == _q("text:line-break"):
            out.append("\n")
        elif child.tag == _q("presentation:notes"):
            pass
        else:
            out.append(_odf_text(child))
        out.append(child.tail or "")
    return "".join(out).strip() if element.tag in (_q("text:p"), _q("text:h")) else "".join(out)


def rtf(name: str, data: bytes) -> Extracted:
    """RTF's text (striprtf); the title from its ``\\info`` group."""
    from striprtf.striprtf import rtf_to_text

    source = data.decode("latin-1")  # RTF is 7-bit; \\'xx escapes carry the code page
    if not source.lstrip().startswith("{\\rtf"):
        raise Unreadable(f"file {name!r} is not RTF (no {{\\rtf header); {MOVE}")
    text = rtf_to_text(source, errors="ignore")
    title = re.search(r"\{\\title\s+([^}]*)\}", source)
    author = re.search(r"\{\\author\s+([^}]*)\}", source)
    return Extracted(
        text=text.strip(),
        format="rtf",
        title=title.group(1).strip() if title else None,
        author=author.group(1).strip() if author else None,
    )


def epub(name: str, data: bytes) -> Extracted:
    """An EPUB's chapters in reading (spine) order, each chapter's text."""
    import lxml.html
    from ebooklib import ITEM_DOCUMENT, epub

    try:
        book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
    except Exception as exc:
        raise Unreadable(f"file {name!r} is not a readable EPUB ({exc}); {MOVE}") from exc
    parts = []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ITEM_DOCUMENT:
            continue
        tree = lxml.html.document_fromstring(item.get_content() or b"<html/>")
        for bad in tree.xpath("//script|//style"):
            bad.drop_tree()
        blocks = [
            " ".join(b.text_content().split())
            for b in tree.xpath(
                "//body//*[self::p or self::h1 or self::h2 or self::h3 or self::h4 or self::li]"
            )
        ]
        parts.append("\n".join(b for b in blocks if b))

    def dc(key: str) -> str | None:
        values = book.get_metadata("DC", key)
        return str(values[0][0]).strip() if values and values[0][0] else None

    return Extracted(
        text="\n\n".join(p for p in parts if p),
        format="epub",
        title=dc("title"),
        author=dc("creator"),
        date=dc("date"),
        pages=len(parts),
    )


def rst(name: str, data: bytes) -> Extracted:
    """reStructuredText as written (like Markdown); the title is its first underlined heading."""
    text = decode_text(name, data)
    heading = re.search(
        r"^(?:([=\-~^\"'`#*+]{3,})\n)?([^\n]+)\n([=\-~^\"'`#*+]{3,})\s*$", text, re.M
    )
    return Extracted(text=text, format="rst", title=heading.group(2).strip() if heading else None)


EXTRACTORS: dict[str, Callable[[str, bytes], Extracted]] = {
    "pptx": pptx,
    "xlsx": xlsx,
    "odt": lambda name, data: odf(name, data, "odt"),
    "ods": lambda name, data: odf(name, data, "ods"),
    "odp": lambda name, data: odf(name, data, "odp"),
    "rtf": rtf,
    "epub": epub,
    "rst": rst,
}
