"""OCR for pages without text: scanned PDF pages (tasks.corpus.formats.pdf) and images (.png,
.jpg, .tif).

RapidOCR (PaddleOCR's PP-OCRv4 models on onnxruntime) was chosen by measured character error
rate and pages/s on pages rendered with known text (``python -m benchmarks.extraction --ocr``,
docs/guide/corpora-of-files.md). Its three ONNX models (~15 MB) ship inside the rapidocr-onnxruntime wheel, so
nothing is downloaded at run time (tests/tasks/corpus/test_ocr.py runs it with sockets refused).
"""

from __future__ import annotations

import functools
import io
import logging
from typing import Any

from tasks.corpus.formats.extract import MOVE, REMOVE, Extracted, Unreadable
from tasks.params.groups import OcrMode

SCALE = (
    3.0  # pages rendered at 216 dpi: CER 3.6% on the benchmark pages (144 dpi: 5.4%, 108: 12.4%)
)
# Images up to 2000 px are enlarged 1.5x first: at 28 px print RapidOCR dropped every space
# between words (CER 13.7%), enlarged it read them all (0%).
IMAGE_UPSCALE, IMAGE_UPSCALE_MAX = 1.5, 2000
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long OCR job


def ocr_image(image: Any) -> str:
    """The text RapidOCR reads in a PIL image, line by line in reading order."""
    import numpy as np

    # No angle classifier: on upright pages it turned whole lines upside down and lost them.
    result, _ = _engine()(np.asarray(image.convert("RGB")), use_cls=False)
    if not result:
        return ""
    boxes = [(min(p[1] for p in box), min(p[0] for p in box), text) for box, text, _ in result]
    lines: list[list[tuple[float, float, str]]] = []
    for top, left, text in sorted(boxes):
        if lines and abs(lines[-1][0][0] - top) < 10:  # same line: a box beside the last
            lines[-1].append((top, left, text))
        else:
            lines.append([(top, left, text)])
    return "\n".join(" ".join(t for _, _, t in sorted(line, key=lambda b: b[1])) for line in lines)


@functools.cache
def _engine() -> Any:
    """One RapidOCR engine per process (its models load in about a second)."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a flow or task run, else docflow.ocr's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run
        return logging.getLogger("docflow.ocr")


def _enlarged(frame: Any) -> Any:
    """A small image enlarged for OCR (see IMAGE_UPSCALE); a large one as it is."""
    from PIL import Image

    if max(frame.size) > IMAGE_UPSCALE_MAX:
        return frame
    size = (int(frame.width * IMAGE_UPSCALE), int(frame.height * IMAGE_UPSCALE))
    return frame.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def image(name: str, data: bytes, mode: OcrMode = "auto") -> Extracted:
    """An image's text by OCR (every frame of a multi-page TIFF is a page)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    if mode == "off":
        raise Unreadable(
            f"file {name!r} is an image and ocr='off'; set the flow parameter ocr to 'auto' "
            f"to read it with OCR {REMOVE}"
        )
    try:
        picture = Image.open(io.BytesIO(data))
        frames = [frame.copy() for frame in ImageSequence.Iterator(picture)]
    except (UnidentifiedImageError, OSError) as exc:
        raise Unreadable(f"file {name!r} is not a readable image ({exc}); {MOVE}") from exc
    texts = [ocr_image(_enlarged(frame)).strip() for frame in frames]
    if not any(texts):
        raise Unreadable(
            f"file {name!r} is an image ({picture.format}) in which OCR found no text; {MOVE}"
        )
    return Extracted(
        text="\n\n".join(texts),
        format=f"image:{(picture.format or 'image').lower()}",
        pages=len(frames),
        ocr_pages=",".join(str(i + 1) for i in range(len(frames))),
    )
