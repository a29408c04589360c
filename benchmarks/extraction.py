"""Files/s of text extraction per format on a generated folder, beside inference's documents/s.

``python -m benchmarks --extraction`` (or ``python -m benchmarks.extraction``): makes ``--files``
real files of each format (benchmarks/documents.py, benchmarks/more_documents.py), then loads the
folder the way process-documents does (tasks.corpus.documents.load_corpus) and times each file's read +
sha256 + type detection + extraction (an archive's files/s counts the archives, each of two
members). ``--candidates`` also times the libraries that were not chosen, when they are installed
(pip install pypdf pdfminer.six readability-lxml markitdown[pptx,xlsx,docx]). ``--ocr-pages``:
the OCR character error rate and pages/s on rendered pages (benchmarks/ocr.py).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import documents as make
from benchmarks import more_documents as more

SENTENCE = "The harbour authority approved the new ferry timetable on Monday."

# Format -> (file suffix, maker of one file's bytes from its index).
FORMATS: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "pdf (3 pages)": (".pdf", lambda i: make.pdf_bytes(f"{SENTENCE} #{i}", pages=3, title="T")),
    "pdf, a ruled table (3 pages)": (
        ".pdf",
        lambda i: more.pdf_table_bytes(f"{SENTENCE} #{i}", pages=3),
    ),
    "docx": (".docx", lambda i: make.docx_bytes(f"{SENTENCE} #{i}", title="T")),
    "html": (".html", lambda i: make.html_bytes(f"{SENTENCE} #{i}")),
    "eml": (".eml", lambda i: make.eml_bytes(f"{SENTENCE} #{i}")),
    "markdown": (".md", lambda i: make.markdown_bytes(f"{SENTENCE} #{i}")),
    "text utf-8": (".txt", lambda i: make.text_bytes(f"Zoë's {SENTENCE} #{i}", "utf-8")),
    "text latin-1": (".txt", lambda i: make.text_bytes(f"Café {SENTENCE} #{i}", "latin-1")),
    "text utf-16": (".txt", lambda i: make.text_bytes(f"Straße {SENTENCE} #{i}", "utf-16")),
    "text, no suffix (magika)": ("", lambda i: make.text_bytes(f"{SENTENCE} #{i}\n" * 5, "utf-8")),
    "rst": (".rst", lambda i: more.rst_bytes(f"{SENTENCE} #{i}")),
    "pptx (2 slides)": (".pptx", lambda i: more.pptx_bytes(f"{SENTENCE} #{i}")),
    "xlsx (2 sheets)": (".xlsx", lambda i: more.xlsx_bytes(f"{SENTENCE} #{i}")),
    "odt": (".odt", lambda i: more.odf_bytes("odt", f"{SENTENCE} #{i}")),
    "ods": (".ods", lambda i: more.odf_bytes("ods", f"{SENTENCE} #{i}")),
    "odp": (".odp", lambda i: more.odf_bytes("odp", f"{SENTENCE} #{i}")),
    "rtf": (".rtf", lambda i: more.rtf_bytes(f"{SENTENCE} #{i}")),
    "epub (2 chapters)": (".epub", lambda i: more.epub_bytes(f"{SENTENCE} #{i}")),
    "text .gz": (".txt.gz", lambda i: gzip.compress(make.text_bytes(f"{SENTENCE} #{i}", "utf-8"))),
    "zip (2 members: txt, md)": (".zip", lambda i: _zip(f"{SENTENCE} #{i}")),
    "tar.gz (2 members: txt, md)": (".tar.gz", lambda i: _tar_gz(f"{SENTENCE} #{i}")),
}


def _members(sentence: str) -> dict[str, bytes]:
    return {"a.txt": sentence.encode(), "b.md": make.markdown_bytes(sentence)}


def _zip(sentence: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in _members(sentence).items():
            archive.writestr(name, data)
    return out.getvalue()


def _tar_gz(sentence: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in _members(sentence).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def generate(root: Path, files: int) -> dict[str, Path]:
    """One folder per format holding ``files`` files; returns format -> folder."""
    folders = {}
    for index, (name, (suffix, maker)) in enumerate(FORMATS.items()):
        folder = root / f"f{index}"
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"doc-{i:04d}{suffix}").write_bytes(maker(i))
        folders[name] = folder
    return folders


def _read_in(folder: Path, name: str) -> bytes:
    return (folder / name).read_bytes()


def measure(folders: dict[str, Path]) -> list[tuple[str, int, float, float]]:
    """(format, files, seconds, MB) of loading each folder as a corpus."""
    from tasks.corpus.documents import load_corpus
    from tasks.corpus.read import read_file

    for folder in folders.values():  # imports and first-call set-up are not per-file costs
        first = min(folder.iterdir())
        list(read_file(first.name, functools.partial(_read_in, folder)))
    rows = []
    for name, folder in folders.items():
        size = sum(p.stat().st_size for p in folder.iterdir())
        started = time.perf_counter()
        corpus = load_corpus(str(folder), max_doc_bytes=10_000_000)
        elapsed = time.perf_counter() - started
        if corpus.rejected or not all(SENTENCE in d.text for d in corpus.documents):
            raise RuntimeError(f"{name}: extraction lost text: {corpus.rejected[:1]}")
        files = sum(1 for _ in folder.iterdir())
        rows.append((name, files, elapsed, size / 1e6))
    return rows


def candidates(folders: dict[str, Path]) -> list[tuple[str, int, float, float]]:
    """The libraries not chosen, on the same PDF and HTML files (those installed)."""
    pdfs = sorted(folders["pdf (3 pages)"].iterdir())
    pages = sorted(folders["html"].iterdir())
    tried: list[tuple[str, list[Path], Callable[[bytes], str]]] = []
    try:
        import pypdf

        tried.append(
            (
                "pdf with pypdf",
                pdfs,
                lambda b: "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(b)).pages),
            )
        )
    except ImportError:
        pass
    try:
        from pdfminer.high_level import extract_text

        tried.append(("pdf with pdfminer.six", pdfs, lambda b: extract_text(io.BytesIO(b))))
    except ImportError:
        pass
    try:
        import lxml.html
        from readability import Document

        tried.append(
            (
                "html with readability-lxml",
                pages,
                lambda b: lxml.html.fromstring(Document(b.decode()).summary()).text_content(),
            )
        )
    except ImportError:
        pass
    tried += _markitdown(folders)
    rows = []
    for name, paths, extract in tried:
        size = sum(p.stat().st_size for p in paths)
        started = time.perf_counter()
        texts = [extract(p.read_bytes()) for p in paths]
        elapsed = time.perf_counter() - started
        found = sum(SENTENCE in " ".join(t.split()) for t in texts)
        rows.append(
            (f"{name} ({found}/{len(paths)} sentences found)", len(paths), elapsed, size / 1e6)
        )
    return rows


def _markitdown(folders: dict[str, Path]) -> list[tuple[str, list[Path], Callable[[bytes], str]]]:
    """MarkItDown (one library for many formats) on the same DOCX, PPTX, XLSX and PDF files."""
    try:
        from markitdown import MarkItDown, StreamInfo
    except ImportError:
        return []
    converter = MarkItDown()

    def convert(suffix: str) -> Callable[[bytes], str]:
        return lambda b: (
            converter.convert_stream(
                io.BytesIO(b), stream_info=StreamInfo(extension=suffix)
            ).text_content
        )

    return [
        (f"{name} with MarkItDown", sorted(folders[name].iterdir()), convert(suffix))
        for name, suffix in (
            ("docx", ".docx"),
            ("pptx (2 slides)", ".pptx"),
            ("xlsx (2 sheets)", ".xlsx"),
            ("pdf (3 pages)", ".pdf"),
        )
    ]


def render(rows: list[tuple[str, int, float, float]]) -> str:
    """One line per format: files/s and MB/s."""
    lines = [f"{'format':<52} {'files':>6} {'files/s':>9} {'MB/s':>7}"]
    for name, files, seconds, mb in rows:
        lines.append(f"{name:<52} {files:>6} {files / seconds:>9.1f} {mb / seconds:>7.2f}")
    return "\n".join(lines)


def section(files: int, ocr_pages: int) -> dict[str, Any]:
    """The bench's extraction section: files/s per format, and OCR's error rate and pages/s."""
    from benchmarks.ocr import measure as measure_ocr

    with tempfile.TemporaryDirectory(prefix="docflow-extraction-") as tmp:
        rows = measure(generate(Path(tmp), files))
    result: dict[str, Any] = {
        "formats": [
            {"format": name, "files": n, "files_per_s": n / seconds, "mb_per_s": mb / seconds}
            for name, n, seconds, mb in rows
        ]
    }
    if ocr_pages:
        cer, pages_per_s, done = measure_ocr(ocr_pages)
        result["ocr"] = {
            "engine": "RapidOCR",
            "pages": done,
            "cer": cer,
            "pages_per_s": pages_per_s,
        }
    return result


def extraction_table(result: dict[str, Any]) -> Any:
    """The section as a rich table: one row per format, then the OCR row."""
    from rich.table import Table

    table = Table(title="Text extraction per format (generated files) and OCR")
    for column in ("format", "files", "files/s", "MB/s"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for row in result["formats"]:
        table.add_row(
            row["format"], str(row["files"]), f"{row['files_per_s']:.1f}", f"{row['mb_per_s']:.2f}"
        )
    ocr = result.get("ocr")
    if ocr:
        table.add_row(
            f"OCR ({ocr['engine']}): CER {ocr['cer']:.2%}",
            str(ocr["pages"]),
            f"{ocr['pages_per_s']:.2f} pages/s",
            "",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extraction", description=__doc__)
    parser.add_argument("--files", type=int, default=50, help="files per format (default 50)")
    parser.add_argument(
        "--candidates", action="store_true", help="also time the libraries not chosen"
    )
    parser.add_argument(
        "--ocr-pages", type=int, default=3, help="rendered pages for the OCR line (0: none)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="docflow-extraction-") as tmp:
        folders = generate(Path(tmp), args.files)
        rows = measure(folders)
        total_files = sum(r[1] for r in rows)
        total_s = sum(r[2] for r in rows)
        rows.append(("all formats", total_files, total_s, sum(r[3] for r in rows)))
        print(render(rows))
        if args.candidates:
            print(render(candidates(folders)))
    if args.ocr_pages:
        from benchmarks.ocr import render as ocr_line

        print(ocr_line(args.ocr_pages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
