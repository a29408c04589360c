"""OCR of pages without text: a PDF of rendered page images with known text, an image, the
``ocr`` modes, and no network at run time."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from benchmarks import documents as make
from benchmarks import more_documents as more
from benchmarks.ocr import cer, page_lines
from tasks.corpus.read import read_file
from tasks.params.groups import ReadOptions


def read_one(name: str, data: bytes, ocr: Any = "auto") -> Any:
    [doc] = list(read_file(name, lambda _: data, ReadOptions(ocr=ocr)))
    return doc


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails: OCR must run from the models inside the package."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("network use refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_scanned_pdf_is_read_with_ocr_under_five_percent_cer(no_network: None) -> None:
    data = more.scanned_pages_pdf([page_lines(0), page_lines(1)])
    doc = read_one("contract-scan.pdf", data)
    assert doc.text is not None, doc.reason
    expected = "\n".join(page_lines(0)) + "\n\n" + "\n".join(page_lines(1))
    rate = cer(expected, doc.text)
    print(f"CER {rate:.2%}")
    assert rate < 0.05, doc.text
    assert (doc.metadata["ocr_pages"], doc.metadata["pages"], doc.metadata["format"]) == (
        "1,2",
        2,
        "pdf",
    )


def test_an_image_is_read_with_ocr(no_network: None) -> None:
    lines = ["Receipt 2291", "Two coffees and a croissant, 9.80 EUR."]
    doc = read_one("receipt.png", more.image_bytes(lines))
    assert doc.text is not None, doc.reason
    assert cer("\n".join(lines), doc.text) < 0.05, doc.text
    assert (doc.metadata["format"], doc.metadata["ocr_pages"]) == ("image:png", "1")


def test_ocr_off_rejects_naming_the_parameter_and_force_reads_text_pages_too() -> None:
    scan = more.scanned_pages_pdf([page_lines(0)])
    off = read_one("scan.pdf", scan, "off")
    assert off.text is None and "ocr='off'" in off.reason and "flow parameter ocr" in off.reason
    image = read_one("photo.jpg", more.image_bytes(fmt="JPEG"), "off")
    assert image.text is None and "is an image and ocr='off'" in image.reason
    text_pdf = make.pdf_bytes("A page with a text layer.")
    auto = read_one("typed.pdf", text_pdf)
    assert auto.metadata["ocr_pages"] is None  # auto: a page with text is not OCR'd
    forced = read_one("typed.pdf", text_pdf, "force")
    assert forced.metadata["ocr_pages"] == "1" and "text layer" in forced.text


def test_an_image_without_text_is_rejected_saying_so() -> None:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (200, 200), "white").save(out, "PNG")
    doc = read_one("blank.png", out.getvalue())
    assert doc.text is None and "OCR found no text" in doc.reason
