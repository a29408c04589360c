"""What a file is: by its suffix when docflow knows it, else by its content (magika).

magika (Google's content-type model, ONNX, shipped in the wheel, no network) was chosen over
puremagic by measurement on generated files (docs/guide/corpora-of-files.md): it named 19 of 19 types right
(plain text, reStructuredText, Markdown, Python, C, shell among them) where puremagic named 11
(it has no answer for text without a signature, and calls any zip a .docx). It reads ~67
files/s here against puremagic's ~3,100, so it runs only on files whose suffix says nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# Suffix -> format: the formats an extractor reads (tasks.corpus.read).
DOCUMENTS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".eml": "eml",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "rst",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".odt": "odt",
    ".ods": "ods",
    ".odp": "odp",
    ".rtf": "rtf",
    ".epub": "epub",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".tif": "image",
    ".tiff": "image",
}
# Compressed single files, read through to what they hold.
COMPRESSED: dict[str, str] = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
# Archives: each member a row of its own (the longest suffix first).
ARCHIVES: dict[str, str] = {
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.bz2": "tar",
    ".tbz2": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
    ".tar.zst": "tar:zstd",
    ".tar": "tar",
    ".zip": "zip",
}
# magika's label -> docflow's format, for the labels an extractor (or an opener) reads.
_LABELS: dict[str, str] = {
    "pdf": "pdf",
    "docx": "docx",
    "html": "html",
    "eml": "eml",
    "markdown": "markdown",
    "txt": "text",
    "rst": "rst",
    "pptx": "pptx",
    "xlsx": "xlsx",
    "odt": "odt",
    "ods": "ods",
    "odp": "odp",
    "rtf": "rtf",
    "epub": "epub",
    "png": "image",
    "jpeg": "image",
    "tiff": "image",
    "zip": "archive:zip",
    "tar": "archive:tar",
    "gzip": "compressed:gzip",
    "bzip": "compressed:bzip2",
    "xz": "compressed:xz",
    "zst": "compressed:zstd",
}


@dataclass(frozen=True)
class Kind:
    """What a file is: ``format`` (an extractor's name, ``archive:zip``, ``compressed:gzip``,
    ``code:python``), or None for a binary nobody reads, with ``what`` it is in words."""

    format: str | None
    what: str
    by: str  # "suffix" or "content"


def suffix_of(name: str) -> str:
    """The lower-case suffix of the last path part ('' when none), e.g. '.pdf'."""
    base = name.rsplit("/", 1)[-1].rsplit("!", 1)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def by_suffix(name: str) -> Kind | None:
    """The kind a known suffix names, or None when the suffix is unknown or missing."""
    suffix = suffix_of(name)
    if suffix in _BY_SUFFIX:  # the common case first: one dict look-up
        return _BY_SUFFIX[suffix]
    lower = name.lower()
    for ending, archive in ARCHIVES.items():
        if lower.endswith(ending):
            return Kind(f"archive:{archive}", f"a {ending} archive", "suffix")
    if suffix in COMPRESSED:
        return Kind(f"compressed:{COMPRESSED[suffix]}", f"a {suffix} file", "suffix")
    return None


_BY_SUFFIX = {suffix: Kind(fmt, f"a {suffix} file", "suffix") for suffix, fmt in DOCUMENTS.items()}


def detect(name: str, data: bytes) -> Kind:
    """The kind of one file: by suffix when known, else by content (any text is text)."""
    known = by_suffix(name)
    if known is not None:
        return known
    return by_content(data)


def by_content(data: bytes) -> Kind:
    """The kind magika finds in ``data``; text it does not name is still text."""
    output = _magika().identify_bytes(data).output
    label = str(output.label)
    what = f"{output.description} ({label}, found by content)"
    found = _LABELS.get(label) or (f"code:{label}" if output.is_text else None)
    if found is None and label in ("unknown", "undefined") and _looks_like_text(data):
        found, what = "text", "text (found by content)"
    textual = found in _TEXTUAL or (found or "").startswith("code:")
    if textual and _nul_bytes(data):  # magika calls a few NUL bytes text; no text has them
        return Kind(None, "binary data (it holds NUL bytes, found by content)", "content")
    return Kind(found, what, "content")


_TEXTUAL = {"text", "markdown", "rst", "html", "eml"}


def _nul_bytes(data: bytes) -> bool:
    """NUL bytes in the first 8 KiB, other than those of UTF-16 text."""
    from tasks.corpus.formats.extract import _utf16_without_bom

    head = data[:8192]
    if b"\x00" not in head or head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    return _utf16_without_bom(head[: len(head) // 2 * 2]) is None


def _looks_like_text(data: bytes) -> bool:
    """No NUL byte in the first 8 KiB and it decodes as UTF-8 (what magika calls unknown)."""
    head = data[:8192]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a character cut at the 8 KiB boundary
    return True


@functools.cache
def _magika() -> Any:
    """One magika model per process (its ONNX model loads in ~0.2 s)."""
    from magika import Magika

    return Magika()
