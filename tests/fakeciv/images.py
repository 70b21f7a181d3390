"""Images for the fake: real JPEG/PNG/WebP previews, and hostile ones, served over HTTP.

`FakeImages` is handed to `FakeCivitai(images=...)`: the catalog's image URLs are then
rewritten to the API origin (``{base_url}/img/...``) and served from there with real bytes
made by Pillow, honouring Civitai's ``width=N`` transform segment. `attach(catalog)` gives every
image a real BlurHash of the picture served for it. ``make_hostile(image_id, kind)`` turns one
image into an attack (`HOSTILE_IMAGE_KINDS`):

* ``bomb``: a small valid PNG that declares 20000x20000 pixels;
* ``truncated``: a real JPEG cut in half;
* ``svg``: ``image/svg+xml`` (with a script), a content type no preview may have;
* ``mislabelled``: labelled ``image/png``, the bytes are a GIF;
* ``redirect``: a 302 to the storage origin (another host), where a real image waits;
* ``redirect-same``: a 302 within the API origin (allowed: the image then comes);
* ``huge-declared``: ``Content-Length: 2147483648``, then bytes until the client hangs up;
* ``huge-streamed``: no length, 2 GiB of bytes streamed (never held in memory) until then;
* ``missing``: 404.

The storage server serves the same ``/img/`` routes without the hostile kinds, so a redirect
there would find an image: its request log shows whether one was followed.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
import threading
import zlib
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from PIL import Image, PngImagePlugin

if TYPE_CHECKING:
    from tests.fakeciv.data import FakeCatalog, FakeImage
    from tests.fakeciv.server import FakeCivitai, _Handler

HOSTILE_IMAGE_KINDS = (
    "bomb",
    "truncated",
    "svg",
    "mislabelled",
    "redirect",
    "redirect-same",
    "huge-declared",
    "huge-streamed",
    "missing",
)
HUGE_BYTES = 2 << 30
SECRET_TEXT = "planted-metadata-7f3a"
"""Written into the EXIF and text chunks of every served picture; a thumbnail must lose it."""
_CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
}
_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_NAME_RE = re.compile(r"(\d+)\.([A-Za-z0-9]+)$")
_STREAM_CHUNK = 64 << 10
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


# --- pictures --------------------------------------------------------------------------------


def picture(seed: int, width: int, height: int) -> Image.Image:
    """A deterministic RGB picture: a colour gradient with a few bars, unique per seed."""
    rng = random.Random(seed)
    base = [rng.randrange(256) for _ in range(6)]
    image = Image.linear_gradient("L").resize((width, height))
    r = image.point(lambda v: (base[0] + v * (base[3] - base[0]) // 255) % 256)
    g = image.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    g = g.point(lambda v: (base[1] + v) % 256)
    b = Image.new("L", (width, height), base[2])
    return Image.merge("RGB", (r, g, b))


def encode(image: Image.Image, fmt: str, *, metadata: bool = True) -> bytes:
    """`image` in `fmt` (JPEG, PNG, WEBP), with EXIF and a text chunk holding `SECRET_TEXT`."""
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = SECRET_TEXT  # ImageDescription
    kwargs: dict[str, Any] = {"exif": exif.tobytes()} if metadata else {}
    if fmt == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", SECRET_TEXT)
        kwargs["pnginfo"] = info
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@cache
def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of `width` x `height` zeros: tens of KB that inflate to gigapixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = []
    batch = 512
    for start in range(0, height, batch):
        parts.append(compressor.compress(row * min(batch, height - start)))
    parts.append(compressor.flush())
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def gif_bytes() -> bytes:
    out = io.BytesIO()
    picture(1, 32, 32).convert("P").save(out, format="GIF")
    return out.getvalue()


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)


# --- BlurHash (an encoder for tests; assetmgr only decodes) ----------------------------------


def _b83(value: int, length: int) -> str:
    return "".join(_ALPHABET[value // 83 ** (length - 1 - i) % 83] for i in range(length))


def _linear(v: int) -> float:
    x = v / 255
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def _srgb(v: float) -> int:
    v = min(1.0, max(0.0, v))
    return int((v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055) * 255 + 0.5)


def blurhash(image: Image.Image, columns: int = 4, rows: int = 3) -> str:
    """The BlurHash of `image` (scaled down to 32 px first; the hash only holds 12 terms)."""
    small = image.convert("RGB").resize((32, 32))
    w, h = small.size
    pixels = [[_linear(c) for c in small.getpixel((x, y))] for y in range(h) for x in range(w)]  # type: ignore[union-attr]
    factors = []
    for j in range(rows):
        for i in range(columns):
            norm = 1 if i == j == 0 else 2
            acc = [0.0, 0.0, 0.0]
            for y in range(h):
                for x in range(w):
                    basis = math.cos(math.pi * i * x / w) * math.cos(math.pi * j * y / h)
                    for c in range(3):
                        acc[c] += basis * pixels[y * w + x][c]
            factors.append([norm * a / (w * h) for a in acc])
    dc, ac = factors[0], factors[1:]
    out = _b83((columns - 1) + (rows - 1) * 9, 1)
    max_ac = max((abs(v) for f in ac for v in f), default=0.0)
    quant = max(0, min(82, int(max_ac * 166 - 0.5))) if ac else 0
    scale = (quant + 1) / 166 if ac else 1.0
    out += _b83(quant, 1)
    out += _b83((_srgb(dc[0]) << 16) + (_srgb(dc[1]) << 8) + _srgb(dc[2]), 4)
    for f in ac:
        q = [max(0, min(18, int(math.copysign(abs(v / scale) ** 0.5, v) * 9 + 9.5))) for v in f]
        out += _b83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out


# --- serving ---------------------------------------------------------------------------------


@dataclass
class FakeImages:
    """What `FakeCivitai(images=...)` serves under ``/img/`` (see the module docstring)."""

    kinds: dict[int, str] = field(default_factory=dict)
    streamed_bytes: int = 0
    """Bytes written by the ``huge-*`` kinds before the client hung up."""
    _sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    _streams: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self._lock)

    def attach(self, catalog: FakeCatalog) -> FakeImages:
        """Real BlurHashes for every still image of `catalog` (of what `/img/` serves)."""
        for version in catalog.versions.values():
            for image in version.images:
                self._sizes[image.id] = (image.width, image.height)
                if image.type == "image":
                    image.hash = blurhash(picture(image.id, 64, 64))
        return self

    def make_hostile(self, image_id: int, kind: str) -> None:
        if kind not in HOSTILE_IMAGE_KINDS:
            raise ValueError(f"unknown hostile image kind {kind!r}")
        self.kinds[image_id] = kind

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no hostile stream is still being written (the client hung up)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._streams == 0, timeout)

    def body(self, image_id: int, ext: str, width: int | None) -> bytes:
        natural = self._sizes.get(image_id, (832, 1216))
        w = min(width or 1024, natural[0])
        h = max(1, round(w * natural[1] / natural[0]))
        return encode(picture(image_id, w, h), _FORMATS[ext])

    def serve(
        self, fake: FakeCivitai, handler: _Handler, path: str, query: str, server: str
    ) -> tuple[int, bytes, list[tuple[str, str]], str | None] | None:
        """(status, body, headers, content type), or None when the handler was written to."""
        match = _NAME_RE.search(path)
        if match is None or match.group(2).lower() not in _CONTENT_TYPES:
            return 404, b"not found", [], "text/plain"
        image_id, ext = int(match.group(1)), match.group(2).lower()
        width_match = re.search(r"/width=(\d+)[,/]", path)
        width = int(width_match.group(1)) if width_match else None
        kind = self.kinds.get(image_id) if server == "api" else None
        if kind == "redirect-same" and "hop=1" in query:
            kind = None
        if kind in ("huge-declared", "huge-streamed"):
            self._stream(handler, declared=kind == "huge-declared")
            return None
        if kind == "redirect":
            return 302, b"", [("Location", f"{fake.storage_url}{path}")], None
        if kind == "redirect-same":
            return 302, b"", [("Location", f"{path}?hop=1")], None
        if kind == "missing":
            return 404, b'{"error":"not found"}', [], "application/json"
        if kind == "svg":
            return 200, SVG, [], "image/svg+xml"
        if kind == "mislabelled":
            return 200, gif_bytes(), [], "image/png"
        if kind == "bomb":
            return 200, bomb_png(), [], "image/png"
        if kind == "truncated":
            return 200, truncated(encode(picture(image_id, 256, 256), "JPEG")), [], "image/jpeg"
        data = self.body(image_id, ext, width)
        return 200, data, [("Cache-Control", "public, max-age=86400")], _CONTENT_TYPES[ext]

    def _stream(self, handler: _Handler, *, declared: bool) -> None:
        headers: list[tuple[str, str | bytes]] = [("Content-Type", "image/jpeg")]
        if declared:
            headers.append(("Content-Length", str(HUGE_BYTES)))
        handler.close_connection = True  # without a length, the body ends with the connection
        filler = bytes(_STREAM_CHUNK)
        with self._lock:
            self._streams += 1
        try:
            handler.wfile.write(handler._head(200, headers) + b"\xff\xd8\xff\xe0")
            sent = 0
            while sent < HUGE_BYTES:
                handler.connection.sendall(filler)
                sent += len(filler)
                with self._lock:
                    self.streamed_bytes += len(filler)
        except OSError:
            pass  # the client stopped reading and hung up: the point of the exercise
        finally:
            with contextlib.suppress(OSError):
                handler._abort()
            with self._idle:
                self._streams -= 1
                self._idle.notify_all()


def image_of(catalog: FakeCatalog, image_id: int) -> FakeImage:
    for version in catalog.versions.values():
        for image in version.images:
            if image.id == image_id:
                return image
    raise KeyError(image_id)


__all__ = [
    "HOSTILE_IMAGE_KINDS",
    "HUGE_BYTES",
    "SECRET_TEXT",
    "SVG",
    "FakeImages",
    "blurhash",
    "bomb_png",
    "encode",
    "gif_bytes",
    "image_of",
    "picture",
    "truncated",
]
