"""Office, e-book and scanned files made with real libraries, for the corpus tests and benchmark.

PPTX with python-pptx, XLSX with openpyxl, EPUB with ebooklib, OpenDocument as the zip of XML
the standard defines, RTF as text, scanned pages as Pillow images (in a PDF by fpdf2, a dev
dependency). Each maker returns the file's bytes; ``sentence`` is text the extraction must find.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

SCAN_LINES = [
    "The harbour authority approved the new ferry timetable on Monday.",
    "Invoice 4471: 12 boxes of paper, total 318.40 EUR, due 30 June 2026.",
    "Scanned contracts and invoices are the most common documents there are.",
    "Quarterly revenue rose by 7 percent while costs fell slightly.",
]


def pptx_bytes(sentence: str, *, notes: str = "Speaker notes here.", title: str = "Deck") -> bytes:
    """Two slides: a title slide holding ``sentence`` (with notes), and a slide with a table."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = title
    slide.placeholders[1].text = sentence
    slide.notes_slide.notes_text_frame.text = notes
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Figures"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for (r, c), text in {(0, 0): "Quarter", (0, 1): "Revenue", (1, 0): "Q3", (1, 1): "1.2"}.items():
        table.cell(r, c).text = text
    deck.core_properties.title = title
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_bytes(sentence: str) -> bytes:
    """Two sheets: a table of figures, and a sheet holding ``sentence`` in a cell."""
    from openpyxl import Workbook

    book = Workbook()
    sheet: Any = book.active
    sheet.title = "Figures"
    for row in (["Quarter", "Revenue"], ["Q3", 1.2], ["Q4", 1.5]):
        sheet.append(row)
    notes = book.create_sheet("Notes")
    notes.append(["Note"])
    notes.append([sentence])
    book.properties.title = "Figures"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


_ODF_MIME = {
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
}
_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:meta="urn:oasis:names:tc:opendocument:xmlns:meta:1.0"'
)


def _table(name: str, rows: list[list[str]]) -> str:
    cells = "".join(
        "<table:table-row>"
        + "".join(f"<table:table-cell><text:p>{v}</text:p></table:table-cell>" for v in row)
        + "</table:table-row>"
        for row in rows
    )
    return f'<table:table table:name="{name}">{cells}</table:table>'


def odf_bytes(kind: str, sentence: str, *, title: str = "Minutes") -> bytes:
    """An OpenDocument text (heading, ``sentence``, a table), spreadsheet or presentation."""
    figures = [["Quarter", "Revenue"], ["Q3", "1.2"]]
    if kind == "odt":
        body = (
            f"<office:text><text:h>{title}</text:h><text:p>{sentence}</text:p>"
            f"{_table('T1', figures)}</office:text>"
        )
    elif kind == "ods":
        body = (
            f"<office:spreadsheet>{_table('Figures', figures)}"
            f"{_table('Notes', [['Note'], [sentence]])}</office:spreadsheet>"
        )
    else:
        body = (
            '<office:presentation><draw:page draw:name="p1"><draw:frame><draw:text-box>'
            f"<text:p>{title}</text:p><text:p>{sentence}</text:p></draw:text-box></draw:frame>"
            "<presentation:notes><draw:frame><draw:text-box><text:p>Speaker notes here.</text:p>"
            "</draw:text-box></draw:frame></presentation:notes></draw:page></office:presentation>"
        )
    content = f'<?xml version="1.0"?><office:document-content {_NS}><office:body>{body}</office:body></office:document-content>'
    meta = (
        f'<?xml version="1.0"?><office:document-meta {_NS}><office:meta><dc:title>{title}'
        "</dc:title><dc:creator>Ada</dc:creator></office:meta></office:document-meta>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        package.writestr("mimetype", _ODF_MIME[kind], compress_type=zipfile.ZIP_STORED)
        package.writestr("content.xml", content)
        package.writestr("meta.xml", meta)
    return out.getvalue()


def rtf_bytes(sentence: str, *, title: str = "Letter") -> bytes:
    """An RTF letter: ``sentence`` in bold, an accented word, a title in its info group."""
    return (
        "{\\rtf1\\ansi\\ansicpg1252\\deff0{\\fonttbl{\\f0 Times;}}{\\info{\\title "
        + title
        + "}{\\author Ada}}\\f0\\fs24 Dear reader,\\par {\\b "
        + sentence
        + "}\\par Caf\\'e9 at noon.\\par}"
    ).encode("ascii")


def epub_bytes(sentence: str, *, title: str = "Book") -> bytes:
    """An EPUB of two chapters; ``sentence`` opens the second."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("docflow-test")
    book.set_title(title)
    book.add_author("Ada")
    chapters = []
    for number, text in ((1, "The first chapter sets the scene."), (2, sentence)):
        chapter = epub.EpubHtml(title=f"Chapter {number}", file_name=f"c{number}.xhtml")
        chapter.content = f"<h1>Chapter {number}</h1><p>{text}</p>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.spine = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def rst_bytes(sentence: str, *, title: str = "Guide") -> bytes:
    """reStructuredText: an underlined title, ``sentence``, a section and a list."""
    return (
        f"{title}\n{'=' * len(title)}\n\n{sentence}\n\nInstall\n-------\n\n* one\n* two\n"
    ).encode()


def page_image(lines: list[str] | None = None, *, size: int = 28) -> Any:
    """A white page (Pillow, L mode) holding ``lines`` of black text, as a scan would."""
    from PIL import Image, ImageDraw, ImageFont

    lines = lines or SCAN_LINES
    font = ImageFont.load_default(size=size)
    image = Image.new("L", (1240, 120 + 60 * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((60, 60 + index * 60), line, fill=0, font=font)
    return image


def image_bytes(lines: list[str] | None = None, fmt: str = "PNG") -> bytes:
    """An image file (PNG, JPEG, TIFF) of ``lines``."""
    out = io.BytesIO()
    page_image(lines).save(out, fmt)
    return out.getvalue()


def scanned_pages_pdf(pages: list[list[str]]) -> bytes:
    """A PDF of page images only (no text layer), one page per list of lines."""
    from fpdf import FPDF

    pdf = FPDF()
    for lines in pages:
        pdf.add_page()
        pdf.image(page_image(lines), x=10, y=10, w=190)
    return bytes(pdf.output())


TABLE_ROWS = [
    ["Port", "Ferries", "Opened"],
    ["Harbour A", "12", "1998"],
    ["Harbour B", "7", "2004"],
]


def pdf_table_bytes(
    sentence: str, rows: list[list[str]] | None = None, *, grid: str = "boxes", pages: int = 1
) -> bytes:
    """A PDF by fpdf2: ``sentence``, a ruled table of ``rows`` (``grid="boxes"``: a box per
    cell, fpdf2's tables; ``"lines"``: the grid drawn as lines), a closing line; then
    ``pages - 1`` pages of plain text."""
    from fpdf import FPDF

    rows = rows or TABLE_ROWS
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 5, f"{sentence} The figures are below.")
    pdf.ln(4)
    if grid == "boxes":
        with pdf.table() as table:
            for row in rows:
                cells = table.row()
                for value in row:
                    cells.cell(value)
    else:
        left, top, width, height = 20.0, pdf.get_y(), 50.0, 8.0
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                pdf.text(left + c * width + 2, top + r * height + 5.5, value)
        for r in range(len(rows) + 1):
            pdf.line(left, top + r * height, left + width * len(rows[0]), top + r * height)
        for c in range(len(rows[0]) + 1):
            pdf.line(left + c * width, top, left + c * width, top + height * len(rows))
        pdf.set_y(top + height * len(rows))
    pdf.ln(4)
    pdf.multi_cell(0, 5, "The timetable follows the table.")
    for page in range(1, pages):
        pdf.add_page()
        pdf.multi_cell(0, 5, f"Page {page + 1} has text only, no table at all.")
    return bytes(pdf.output())
