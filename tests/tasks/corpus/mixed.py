"""A folder of real files of every kind docflow reads or rejects, built with real libraries."""

from __future__ import annotations

from pathlib import Path

from benchmarks import documents as make

# File -> a sentence its extracted text must contain.
KNOWN = {
    "reports/annual.pdf": "The bridge opened to traffic in May after two years of work.",
    "reports/q3/memo.docx": "Revenue rose by twelve percent in the third quarter.",
    "web/story.html": "The river festival drew forty thousand visitors this weekend.",
    "mail/minutes.eml": "Please send your comments on the draft before Friday noon.",
    "notes/readme.md": "Markdown notes keep their headings and lists.",
    "text/utf8.txt": "Zoë paid 12 € for crème brûlée in Kraków.",
    "text/latin1.txt": "Le café était déjà fermé à minuit, dit-il à sa sœur.".replace("œ", "oe"),
    "text/utf16.txt": "Die Straße nach Köln war gesperrt, sagte der Fahrer.",
    # A page image only (no text layer), read by OCR (ocr="auto").
    "scans/scan.pdf": "Scanned page: pixels, no text layer",
}
# File -> words its rejection reason must contain.
REJECTED = {
    "reports/locked.pdf": ("encrypted PDF", "`corpus`"),
    "bin/blob.bin": ("is Unknown binary data", "which docflow does not read", "`corpus`"),
    "text/empty.txt": ("is empty (0 bytes)", "`corpus`"),
    "text/binary.txt": ("binary, not text", "`corpus`"),
    "web/blank.html": ("no text after extraction", "`corpus`"),
}


def mixed_folder(root: Path) -> Path:
    """One real file of each kind, in nested folders, plus every kind of file that is rejected."""
    files = {
        "reports/annual.pdf": make.pdf_bytes(
            KNOWN["reports/annual.pdf"], pages=3, title="Annual report", author="City Council"
        ),
        "reports/q3/memo.docx": make.docx_bytes(
            KNOWN["reports/q3/memo.docx"], title="Q3 memo", author="Finance"
        ),
        "web/story.html": make.html_bytes(KNOWN["web/story.html"], title="River festival"),
        "mail/minutes.eml": make.eml_bytes(
            KNOWN["mail/minutes.eml"], subject="Draft minutes", sender="ann@example.org"
        ),
        "notes/readme.md": make.markdown_bytes(KNOWN["notes/readme.md"], title="Notes"),
        "text/utf8.txt": make.text_bytes(KNOWN["text/utf8.txt"], "utf-8"),
        "text/latin1.txt": make.text_bytes(KNOWN["text/latin1.txt"], "latin-1"),
        "text/utf16.txt": make.text_bytes(KNOWN["text/utf16.txt"], "utf-16"),
        "reports/locked.pdf": make.pdf_bytes("Secret numbers.", user_password="open-sesame"),
        "scans/scan.pdf": make.scanned_pdf_bytes(),
        "bin/blob.bin": bytes(range(256)) * 4,
        "text/empty.txt": b"",
        "text/binary.txt": b"\x00\x01\x02\x03binary\x00\xff\xfe\x00" * 8 + b"\x89PNG",
        "web/blank.html": b"<html><head><title>x</title></head><body><nav></nav></body></html>",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
