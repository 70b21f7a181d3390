"""Regenerate the shipped CLIP tokenizer files from OpenAI's BPE merge list.

Provenance: ``bpe_simple_vocab_16e6.txt.gz`` (MIT, (c) 2021 OpenAI) as shipped inside the
``open-clip-torch`` wheel on PyPI. Fetch it without installing anything::

    pip download --no-deps open-clip-torch -d /tmp/oc
    python -m tests.synth.build_tokenizer /tmp/oc/open_clip_torch-*.whl

The output (``vocab.json.gz``, ``merges.txt.gz``) is byte-for-byte reproducible: gzip with
mtime 0 and compact, insertion-ordered JSON.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

#: sha256 of the known-good ``bpe_simple_vocab_16e6.txt.gz`` (open_clip and clip-anytorch agree).
BPE_GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
#: CLIP's vocabulary: 512 byte symbols + 48 894 merges + 2 specials.
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 512 - 2

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "sandbox" / "worker" / "configs" / "tokenizer"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for raw bytes, in CLIP's (GPT-2's) order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """Build the vocabulary the way CLIP's own tokenizer derives it from the merge list."""
    lines = bpe_text.split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is the version header
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError("unexpected BPE merge list layout")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0 and no filename keep the output reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def read_bpe_gz(source: Path) -> bytes:
    """The .gz bytes, from the file itself or from inside an open-clip-torch wheel."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as whl:
            return whl.read(BPE_MEMBER)
    return source.read_bytes()


def build(source: Path, out_dir: Path) -> None:
    raw = read_bpe_gz(source)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BPE_GZ_SHA256:
        raise ValueError(f"{source}: sha256 {digest} is not the known CLIP BPE file")
    vocab, merges = vocab_and_merges(gzip.decompress(raw).decode("utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # transformers skips only lines that start with '#', so the header must be exactly this.
    merges_txt = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8")
    (out_dir / "vocab.json.gz").write_bytes(_gzip_bytes(vocab_json))
    (out_dir / "merges.txt.gz").write_bytes(_gzip_bytes(merges_txt))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="open-clip-torch wheel or the BPE .gz file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        build(args.source, args.out)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"build_tokenizer: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
