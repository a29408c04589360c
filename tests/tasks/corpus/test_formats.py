"""PowerPoint, Excel, OpenDocument, RTF, EPUB and reStructuredText files made in the test:
each accepted with its text, tables as Markdown, and its metadata columns."""

from __future__ import annotations

from benchmarks import documents as make
from benchmarks import more_documents as more
from tasks.corpus.read import FileDocument, read_file

SENTENCE = "The tenant signed the harbour lease on the first of May."
TABLE = "| Quarter | Revenue |\n| --- | --- |\n| Q3 | 1.2 |"


def read_one(name: str, data: bytes) -> FileDocument:
    [doc] = list(read_file(name, lambda _: data))
    assert doc.text is not None, doc.reason
    return doc


def test_pptx_slides_tables_and_notes() -> None:
    doc = read_one("deck.pptx", more.pptx_bytes(SENTENCE, notes="Mention the ferry.", title="Q3"))
    text = doc.text or ""
    assert text.startswith("## Slide 1\n\nQ3\n\n" + SENTENCE)
    assert "Notes: Mention the ferry." in text and "## Slide 2" in text and TABLE in text
    assert (doc.metadata["format"], doc.metadata["title"], doc.metadata["pages"]) == (
        "pptx",
        "Q3",
        2,
    )


def test_xlsx_each_sheet_as_a_markdown_table() -> None:
    doc = read_one("figures.xlsx", more.xlsx_bytes(SENTENCE))
    assert doc.text == (
        "## Sheet: Figures\n\n| Quarter | Revenue |\n| --- | --- |\n| Q3 | 1.2 |\n| Q4 | 1.5 |"
        f"\n\n## Sheet: Notes\n\n| Note |\n| --- |\n| {SENTENCE} |"
    )
    assert (doc.metadata["format"], doc.metadata["pages"]) == ("xlsx", 2)


def test_opendocument_text_spreadsheet_and_presentation() -> None:
    odt = read_one("minutes.odt", more.odf_bytes("odt", SENTENCE, title="Minutes"))
    assert odt.text == f"Minutes\n\n{SENTENCE}\n\n{TABLE}"
    assert (odt.metadata["format"], odt.metadata["title"], odt.metadata["author"]) == (
        "odt",
        "Minutes",
        "Ada",
    )
    ods = read_one("figures.ods", more.odf_bytes("ods", SENTENCE))
    notes = f"| Note |\n| --- |\n| {SENTENCE} |"
    assert ods.text == f"## Sheet: Figures\n\n{TABLE}\n\n## Sheet: Notes\n\n{notes}"
    odp = read_one("deck.odp", more.odf_bytes("odp", SENTENCE, title="Deck"))
    assert odp.text == f"## Slide 1\n\nDeck\n\n{SENTENCE}\n\nNotes: Speaker notes here."


def test_rtf_epub_and_rst() -> None:
    rtf = read_one("letter.rtf", more.rtf_bytes(SENTENCE, title="Letter"))
    assert rtf.text == f"Dear reader,\n{SENTENCE}\nCafé at noon."
    assert (rtf.metadata["format"], rtf.metadata["title"]) == ("rtf", "Letter")
    book = read_one("book.epub", more.epub_bytes(SENTENCE, title="Tides"))
    assert book.text == f"Chapter 1\nThe first chapter sets the scene.\n\nChapter 2\n{SENTENCE}"
    assert (book.metadata["title"], book.metadata["author"], book.metadata["pages"]) == (
        "Tides",
        "Ada",
        2,
    )
    guide = read_one("guide.rst", more.rst_bytes(SENTENCE, title="Install guide"))
    assert SENTENCE in (guide.text or "") and guide.metadata["title"] == "Install guide"
    assert guide.metadata["format"] == "rst"


def test_docx_tables_are_markdown_tables() -> None:
    doc = read_one("memo.docx", make.docx_bytes(SENTENCE))
    assert "| Quarter | Revenue |\n| --- | --- |\n| Q3 | 1.2 million |" in (doc.text or "")


def test_office_files_found_by_content_without_a_suffix() -> None:
    for data, fmt in (
        (more.pptx_bytes(SENTENCE), "pptx"),
        (more.xlsx_bytes(SENTENCE), "xlsx"),
        (more.epub_bytes(SENTENCE), "epub"),
        (more.rtf_bytes(SENTENCE), "rtf"),
    ):
        doc = read_one("attachment", data)
        assert doc.metadata["format"] == fmt and SENTENCE in (doc.text or "")
