"""OCR accuracy and speed: character error rate on pages rendered with known text, pages/s.

``python -m benchmarks.ocr`` (and ``python -m benchmarks --extraction``, which prints it after
the per-format table): renders ``--pages`` page images (Pillow's scalable font, 28 px, as a
~150 dpi scan of 11-point print) into a PDF with no text layer, reads it back through docflow's
own PDF path with ``ocr="auto"``, and compares the text with what was drawn.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.more_documents import SCAN_LINES, scanned_pages_pdf


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two strings."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def cer(expected: str, got: str) -> float:
    """Character error rate: edits to turn ``got`` into ``expected`` over its length, with runs
    of whitespace counted as one space (line breaks are layout, not characters)."""
    want, have = " ".join(expected.split()), " ".join(got.split())
    return edit_distance(want, have) / max(len(want), 1)


def page_lines(page: int) -> list[str]:
    """The known lines of page ``page``: the fixed sentences, numbered so pages differ."""
    return [f"Page {page + 1}."] + SCAN_LINES


def measure(pages: int) -> tuple[float, float, int]:
    """(CER, pages/s, OCR'd pages) of docflow reading a ``pages``-page scanned PDF."""
    from tasks.corpus.formats import ocr
    from tasks.corpus.formats.pdf import pdf

    data = scanned_pages_pdf([page_lines(p) for p in range(pages)])
    from benchmarks.more_documents import page_image

    ocr.ocr_image(page_image(["warm-up"]))  # the model load and first run are once per process
    started = time.perf_counter()
    extracted = pdf("scan.pdf", data, "auto")
    elapsed = time.perf_counter() - started
    expected = "\n\n".join("\n".join(page_lines(p)) for p in range(pages))
    done = len((extracted.ocr_pages or "").split(","))
    return cer(expected, extracted.text), pages / elapsed, done


def render(pages: int) -> str:
    """One line: CER and pages/s."""
    rate, speed, done = measure(pages)
    return (
        f"OCR (RapidOCR, {done} rendered pages, no text layer): CER {rate:.2%}, {speed:.2f} pages/s"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ocr", description=__doc__)
    parser.add_argument("--pages", type=int, default=3, help="pages to render (default 3)")
    print(render(parser.parse_args(argv).pages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
