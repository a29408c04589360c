"""Text and metadata of one document file: DOCX, HTML, e-mail, Markdown, plain text (PDFs, with
tables and OCR for pages without text, are tasks.corpus.formats.pdf; which reader a file gets is
tasks.corpus.read).

Libraries (measured in docs/guide/corpora-of-files.md): pypdfium2 for PDF (PDFium: 3x pypdf, 30x
pdfminer.six on the same files, same text), python-docx for Word, trafilatura for the main
content of HTML (drops navigation, keeps paragraph breaks), the stdlib ``email`` package for
.eml and charset-normalizer for text that is not UTF-8 or UTF-16.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

# What a rejection says a user can do: the folder is the flow's `corpus` parameter.
MOVE = "move it out of the folder given as `corpus`"
REMOVE = f"or {MOVE}"


class Unreadable(Exception):
    """A file that yields no document; the message is the rejection reason."""


@dataclass
class Extracted:
    """The text of one file and the metadata its format carries (None where it has none)."""

    text: str
    format: str
    title: str | None = None
    author: str | None = None
    date: str | None = None
    pages: int | None = None
    ocr_pages: str | None = None  # the pages read with OCR ("1,3"), None when none were
    compression: str | None = None  # gzip, bzip2, xz or zstd for a compressed file

    def metadata(self) -> dict[str, Any]:
        """The format's metadata as result columns (the same keys for every file)."""
        return {
            "format": self.format,
            "title": self.title,
            "author": self.author,
            "date": self.date,
            "pages": self.pages,
            "ocr_pages": self.ocr_pages,
            "compression": self.compression,
        }


def _pdf_date(value: str | None) -> str | None:
    """A PDF date (D:YYYYMMDDHHmmSS...) as ISO text (YYYY-MM-DD[THH:MM:SS])."""
    match = re.match(r"D?:?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?", value or "")
    if not match:
        return value or None
    y, mo, d, h, mi, s = match.groups()
    day = f"{y}-{mo or '01'}-{d or '01'}"
    return f"{day}T{h}:{mi or '00'}:{s or '00'}" if h else day


def _docx(name: str, data: bytes) -> Extracted:
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # zipfile.BadZipFile, KeyError, lxml errors
        if data.startswith(b"\xd0\xcf\x11\xe0"):  # an OLE container: encrypted (or legacy .doc)
            raise Unreadable(
                f"file {name!r} is an encrypted (password-protected) Word file, or an old .doc "
                f"renamed .docx; save it as an unencrypted .docx {REMOVE}"
            ) from exc
        raise Unreadable(f"file {name!r} is not a readable DOCX ({exc}); {MOVE}") from exc
    from tasks.corpus.formats.markdown import markdown_table

    parts = [p.text for p in document.paragraphs]
    for table in document.tables:  # as Markdown tables, which extraction prompts can read
        parts.append("\n" + markdown_table([[c.text for c in row.cells] for row in table.rows]))
    core = document.core_properties
    return Extracted(
        text="\n".join(parts).strip(),
        format="docx",
        title=core.title or None,
        author=core.author or None,
        date=core.created.isoformat() if core.created else None,
    )


def _html(name: str, data: bytes | str) -> Extracted:
    import lxml.html
    import trafilatura

    markup = data if isinstance(data, str) else decode_text(name, data)
    if not markup.strip():
        return Extracted(text="", format="html")
    try:
        tree = lxml.html.document_fromstring(markup)
    except (ValueError, lxml.etree.ParserError) as exc:
        raise Unreadable(f"file {name!r} is not readable HTML ({exc}); {MOVE}") from exc
    title = _first(tree, "//title/text()", "//meta[@property='og:title']/@content")
    author = _first(tree, "//meta[@name='author']/@content")
    date = _first(
        tree,
        "//meta[@property='article:published_time']/@content",
        "//meta[@name='date']/@content",
    )
    # Text only: trafilatura's metadata search (htmldate) costs 2-3x the extraction itself.
    found = trafilatura.bare_extraction(tree, include_comments=False)
    text = ""
    if isinstance(found, dict):
        text = found.get("text") or ""
    elif found is not None:
        text = found.text or ""
    if not text.strip():  # no main content found: the page's whole text, not nothing
        text = trafilatura.html2txt(markup)
    return Extracted(
        text=text.strip(),
        format="html",
        title=title,
        author=author,
        date=date,
    )


def _first(tree: Any, *paths: str) -> str | None:
    """The first non-empty value of the XPath expressions, stripped."""
    for path in paths:
        for value in tree.xpath(path):
            if str(value).strip():
                return str(value).strip()
    return None


def _eml(name: str, data: bytes) -> Extracted:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    if not message.keys():
        raise Unreadable(f"file {name!r} is not an e-mail (no headers); {MOVE}")
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if isinstance(body, EmailMessage):
        try:
            content = body.get_content()
        except (LookupError, ValueError):  # an unknown charset
            payload = body.get_payload(decode=True)
            content = decode_text(name, payload if isinstance(payload, bytes) else b"")
        text = _html(name, content).text if body.get_content_subtype() == "html" else content
    return Extracted(
        text=text.strip(),
        format="eml",
        title=_header(message, "subject"),
        author=_header(message, "from"),
        date=_iso_date(_header(message, "date")),
    )


def _iso_date(value: str | None) -> str | None:
    """An e-mail Date header as ISO 8601, like the other formats' dates (as written if odd)."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError):
        return value


def _header(message: EmailMessage, key: str) -> str | None:
    value = message.get(key)
    return str(value) if value is not None else None


def _markdown(name: str, data: bytes) -> Extracted:
    text = decode_text(name, data)
    heading = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return Extracted(text=text, format="markdown", title=heading.group(1) if heading else None)


def _text(name: str, data: bytes) -> Extracted:
    return Extracted(text=decode_text(name, data), format="text")


def decode_text(name: str, data: bytes) -> str:
    """Text in UTF-8 (with or without BOM), UTF-16 (BOM or not) or a legacy 8-bit encoding."""
    for bom, encoding in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                break  # not what its first bytes claim: look at it as bytes
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        return utf16
    if b"\x00" in data:
        raise Unreadable(f"file {name!r} is binary, not text (it holds NUL bytes); {MOVE}")
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None and not _latin_script(str(best)):
        return str(best)  # Cyrillic, Greek, Arabic, ... in an 8-bit code page
    # Latin-script 8-bit text: Windows-1252 (a superset of Latin-1's letters), as browsers read
    # "latin-1"; charset-normalizer ranks look-alike code pages (mac_latin2, cp1257) level with
    # it on short texts.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        if best is None:
            raise Unreadable(
                f"file {name!r} is not text in any common encoding; re-save it as UTF-8 {REMOVE}"
            ) from None
        return str(best)


def _latin_script(text: str) -> bool:
    """Most non-ASCII letters of ``text`` are Latin (or it has none)."""
    letters = [ch for ch in text if ord(ch) > 127 and ch.isalpha()]
    latin = sum(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)
    return latin * 2 >= len(letters)


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without a BOM: NULs on every other byte (ASCII-range text)."""
    if len(data) < 4 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    half = len(data) // 2
    for encoding, nuls in (("utf-16-le", odd), ("utf-16-be", even)):
        if nuls > half * 0.6:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return None
    return None


_EXTRACTORS: dict[str, Callable[[str, bytes], Extracted]] = {
    "docx": _docx,
    "html": _html,
    "eml": _eml,
    "markdown": _markdown,
    "text": _text,
}
