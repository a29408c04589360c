"""AWS event-stream framing (``application/vnd.amazon.eventstream``) for response streams.

botocore ships the parser (``botocore.eventstream``) but no encoder; a message is a prelude
(total length, headers length, CRC32 of both), string headers, the payload and a CRC32 of it
all, the layout botocore's ``EventStreamMessage`` checks. Tests read what this writes with
botocore's own parser (through unmodified boto3 clients).
"""

from __future__ import annotations

import json
import struct
from binascii import crc32

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7  # header value type: string


def _headers(headers: dict[str, str]) -> bytes:
    out = b""
    for name, value in headers.items():
        key, data = name.encode("utf-8"), value.encode("utf-8")
        out += struct.pack(">B", len(key)) + key + struct.pack(">BH", _STRING, len(data)) + data
    return out


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    encoded = _headers(headers)
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", crc32(message))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data`` as its ``Bytes``."""
    return encode(
        {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        },
        data,
    )


def stream_error(kind: str, message: str, error_code: str | None = None) -> bytes:
    """A modelled exception event: ``ModelStreamError`` or ``InternalStreamFailure``."""
    body: dict[str, str] = {"Message": message}
    if error_code is not None:
        body["ErrorCode"] = error_code
    return encode(
        {
            ":exception-type": kind,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(body).encode("utf-8"),
    )
