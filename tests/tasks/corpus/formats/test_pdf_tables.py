"""Tables in PDFs come out as Markdown tables in reading order; PDFs without tables are read as
before (pypdfium2's text, pdfplumber never consulted)."""

from __future__ import annotations

from typing import Any

import pypdfium2 as pdfium
import pytest

from benchmarks import documents as make
from benchmarks import more_documents as more
from tasks.corpus.formats.pdf_tables import ruled
from tasks.corpus.read import read_file

TABLE = """| Port | Ferries | Opened |
| --- | --- | --- |
| Harbour A | 12 | 1998 |
| Harbour B | 7 | 2004 |"""


def read_one(name: str, data: bytes) -> Any:
    [doc] = list(read_file(name, lambda _: data))
    assert doc.text is not None, doc.reason
    return doc


def pdfium_text(data: bytes) -> str:
    """The PDF's text layer as pypdfium2 gives it, pages apart: what a PDF read as before."""
    document = pdfium.PdfDocument(data)
    texts = []
    for index in range(len(document)):
        textpage = document[index].get_textpage()
        texts.append(textpage.get_text_range().replace("\r\n", "\n").strip())
        textpage.close()
    document.close()
    return "\n\n".join(texts)


@pytest.mark.parametrize("grid", ["boxes", "lines"])
def test_a_ruled_table_is_a_markdown_table_between_the_text_around_it(grid: str) -> None:
    data = more.pdf_table_bytes("The harbour authority met.", grid=grid, pages=2)
    text = read_one("report.pdf", data).text
    assert TABLE in text, text
    before = text.index("The harbour authority met. The figures are below.")
    after = text.index("The timetable follows the table.")
    assert before < text.index(TABLE) < after < text.index("Page 2 has text only")
    assert text.count("Harbour A") == 1  # the cells once, in the table, not again as lines
    # The page without a table is pypdfium2's text as it was.
    assert text.endswith("\n\n" + pdfium_text(data).split("\n\n")[-1])


def test_a_pdf_without_tables_is_read_as_before() -> None:
    data = make.pdf_bytes("The harbour authority met.", pages=3, title="Minutes")
    doc = read_one("minutes.pdf", data)
    assert doc.text == pdfium_text(data)
    assert doc.metadata["pages"] == 3 and doc.metadata["title"] == "Minutes"
    document = pdfium.PdfDocument(data)
    pages = [document[i] for i in range(len(document))]  # held: .raw is theirs
    assert not any(ruled(page.raw) for page in pages)  # so pdfplumber is never opened
    document.close()


def test_boxes_that_are_no_table_leave_the_text_as_it_was() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.add_page()
    for y in (20, 60):  # two framed notes: enough lines to be searched, no table in them
        pdf.rect(15, y, 150, 30)
        pdf.set_xy(20, y + 5)
        pdf.multi_cell(140, 5, f"A framed note at {y} mm says the ferry leaves at noon.")
    data = bytes(pdf.output())
    document = pdfium.PdfDocument(data)
    page = document[0]
    assert ruled(page.raw)  # searched by pdfplumber ...
    document.close()
    assert read_one("notes.pdf", data).text == pdfium_text(data)  # ... and left as it was
