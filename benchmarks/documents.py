"""Real document files made with real libraries, for the extraction tests and benchmark.

PDFs with fpdf2 (a dev dependency), DOCX with python-docx, e-mail with the stdlib ``email``.
Each maker returns the file's bytes; ``sentence`` is a line the extracted text must contain.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

FILLER = (
    "The committee met on Tuesday to review the budget, the schedule and the open questions "
    "about the new library building; each member spoke in turn and the minutes were approved."
)


def pdf_bytes(
    sentence: str,
    *,
    pages: int = 1,
    title: str | None = None,
    author: str | None = None,
    user_password: str | None = None,
) -> bytes:
    """A PDF with a text layer: ``sentence`` on page 1, filler paragraphs on every page."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_title(title)
    if author:
        pdf.set_author(author)
    if user_password:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    for page in range(pages):
        pdf.add_page()
        text = (f"{sentence} " if page == 0 else "") + " ".join([FILLER] * 4)
        pdf.multi_cell(0, 5, text)
    return bytes(pdf.output())


def scanned_pdf_bytes() -> bytes:
    """A PDF like a scan: one page holding only an image, no text layer."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (800, 200), color=255)  # 28 px print: a legible scan, for OCR
    font = ImageFont.load_default(size=28)
    ImageDraw.Draw(image).text((20, 80), "Scanned page: pixels, no text layer", fill=0, font=font)
    pdf = FPDF()
    pdf.add_page()
    pdf.image(image, x=10, y=10, w=180)
    return bytes(pdf.output())


def docx_bytes(sentence: str, *, title: str | None = None, author: str | None = None) -> bytes:
    """A Word document: a heading, ``sentence``, a filler paragraph and a small table."""
    import docx

    document = docx.Document()
    document.add_heading(title or "Memo", level=1)
    document.add_paragraph(sentence)
    document.add_paragraph(FILLER)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Quarter", "Revenue"
    table.cell(1, 0).text, table.cell(1, 1).text = "Q3", "1.2 million"
    if title:
        document.core_properties.title = title
    if author:
        document.core_properties.author = author
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def html_bytes(sentence: str, *, title: str = "Article") -> bytes:
    """A web page: navigation, header, footer and an article holding ``sentence``."""
    nav = "".join(f"<li><a href='/section/{i}'>Menu section {i}</a></li>" for i in range(12))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<header><a href='/'>Site banner</a> Subscribe to our newsletter</header>"
        f"<nav><ul>{nav}</ul></nav>"
        f"<main><article><h1>{title}</h1><p>{sentence}</p><p>{FILLER}</p>"
        f"<p>{FILLER.replace('Tuesday', 'Friday')}</p></article></main>"
        "<footer>Copyright notice and cookie settings</footer></body></html>"
    ).encode()


def eml_bytes(sentence: str, *, subject: str = "Minutes", sender: str = "ann@example.org") -> bytes:
    """An e-mail with a plain-text body holding ``sentence``."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = "team@example.org"
    message["Date"] = format_datetime(datetime(2026, 3, 4, 9, 30, tzinfo=UTC))
    message.set_content(f"Hello team,\n\n{sentence}\n\n{FILLER}\n\nAnn\n")
    return bytes(message)


def text_bytes(sentence: str, encoding: str = "utf-8") -> bytes:
    """Plain text in ``encoding`` (utf-16 writes a BOM, as Windows tools do)."""
    return f"{sentence}\n\n{FILLER}\n".encode(encoding)


def markdown_bytes(sentence: str, *, title: str = "Notes") -> bytes:
    """A Markdown file with a level-1 heading."""
    return f"# {title}\n\n{sentence}\n\n- {FILLER}\n".encode()
