"""Checking uploaded images before anything else touches them.

* Size: the whole request is limited by :class:`RequestSizeLimit` (413 before the body is read
  when ``Content-Length`` says so, else as soon as the limit is passed); each file by
  :func:`read_upload`.
* Type by content: PIL identifies the format from the bytes; the file name and the client's
  ``Content-Type`` are ignored.
* Decompression bombs: the pixel count is read from the header and checked before decoding;
  decoding itself goes through :func:`wbc.data.load_image` (PIL's own bomb guard, truncated and
  corrupt files).
* Names: the client's file name is kept for display only; files are stored under names the
  server makes (``<n>.<format extension>``).

A problem with one file is an :class:`UploadError` with an HTTP status and a one-line message, so
a batch can report it next to the files that were fine.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data import load_image
from ..errors import BadImageError
from .settings import MB

#: Formats accepted, by PIL format name: (extension the file is stored with, media type).
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "TIFF": (".tif", "image/tiff"),
    "BMP": (".bmp", "image/bmp"),
    "WEBP": (".webp", "image/webp"),
    "GIF": (".gif", "image/gif"),
}


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass
class CheckedImage:
    filename: str  # the client's name, cleaned, for display
    data: bytes
    ext: str
    media_type: str
    width: int
    height: int


def display_filename(name: str | None, fallback: str = "upload") -> str:
    """The last path component of a client's file name, without control characters, at most 255 chars.

    >>> display_filename("../../etc/passwd"), display_filename("C:\\\\x\\\\field 1.jpg"), display_filename(None)
    ('passwd', 'field 1.jpg', 'upload')
    """
    name = re.split(r"[/\\]", name or "")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:255] or fallback


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{n / 1024:.0f} kB"


def read_upload(file, filename: str | None, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Read one uploaded file and check its size, format and pixel count (not yet fully decoded).

    Raises:
        UploadError: 413 too large (bytes or pixels), 415 not a supported image, 422 empty or unreadable.
    """
    name = display_filename(filename)
    data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        file.seek(0, io.SEEK_END)
        raise UploadError(413, f"{name}: file is {_mb(file.tell())}; the limit is {_mb(max_bytes)} per file "
                               "(wbc serve --max-file-mb)")
    if not data:
        raise UploadError(422, f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                fmt, (w, h) = img.format, img.size
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image (content is not a known image format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UploadError(413, f"{name}: image has too many pixels (possible decompression bomb)") from None
    except Exception as exc:  # PIL raises many types for a broken header  # noqa: BLE001
        raise UploadError(422, f"{name}: corrupt image header ({exc.__class__.__name__})") from None
    if fmt not in FORMATS:
        raise UploadError(415, f"{name}: unsupported image format {fmt}; use "
                               + ", ".join(sorted(FORMATS)))
    if w * h > max_pixels:
        raise UploadError(413, f"{name}: image is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is "
                               f"{max_pixels / 1e6:g} (wbc serve --max-megapixels; possible decompression bomb)")
    ext, media_type = FORMATS[fmt]
    return CheckedImage(name, data, ext, media_type, w, h)


def store_and_decode(img: CheckedImage, path: Path) -> Image.Image:
    """Write the checked bytes to ``path`` (a server-made name) and decode them fully.

    Raises:
        UploadError: 422 when the image cannot be decoded (truncated, corrupt); the file is removed.
    """
    path.write_bytes(img.data)
    try:
        return load_image(path)
    except BadImageError as exc:
        path.unlink(missing_ok=True)
        raise UploadError(422, f"{img.filename}: {exc.reason}") from None


def error_entry(filename: str | None, exc: UploadError) -> dict:
    return {"filename": display_filename(filename), "status": exc.status, "error": exc.message}


# ----------------------------------------------------------------------------------------------
# the whole request


def too_large_message(limit: int, size: int | None = None) -> str:
    got = f"request is {_mb(size)}; " if size is not None else "request is larger than allowed; "
    return got + f"the limit is {_mb(limit)} per request (wbc serve --max-request-mb); send fewer files at once"


class RequestSizeLimit:
    """ASGI middleware: requests with a body larger than ``max_bytes`` get 413 with a JSON message."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _json(send, 413, too_large_message(self.max_bytes, int(length)))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # FastAPI passes HTTPException through its body parser
                    raise HTTPException(413, too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited, send)


async def _json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
