#!/usr/bin/env python3
"""Writes small deterministic inputs for the models of tools/models/models.tsv as TensorProto .pb files named after
the graph inputs (the layout `tapml run|debug --inputs DIR` reads).

usage: make-inputs.py NAME OUT_DIR      (NAME: a model name from models.tsv, e.g. ocr-det)

The shapes are the smallest sensible ones (MODELS.md says why); tests/Tapml.Tests/RealModelTests.cs builds the same
tensors in C#.
"""
import math
import os
import struct
import sys

F32, I64 = 1, 7


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tensor(name, dtype, dims, values):
    msg = bytearray()
    for d in dims:
        msg += b"\x08" + varint(d)
    msg += b"\x10" + varint(dtype)
    nb = name.encode()
    msg += b"\x42" + varint(len(nb)) + nb
    raw = struct.pack("<%d%s" % (len(values), "f" if dtype == F32 else "q"), *values)
    msg += b"\x4a" + varint(len(raw)) + raw
    return bytes(msg)


def image(c, h, w):
    # Dark strokes on a light page, normalized like PaddleOCR ((x/255 - 0.5) / 0.5): horizontal "text lines".
    vals = []
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                ink = (y // 6) % 3 == 1 and (x // 4) % 5 != 4 and math.sin(0.9 * x + 0.3 * y + ch) > -0.2
                vals.append(-0.8 if ink else 0.9 - 0.05 * ch)
    return vals


def audio(n, scale):
    return [scale * (0.5 * math.sin(2 * math.pi * 220 * i / 16000) + 0.25 * math.sin(2 * math.pi * 1375 * i / 16000 + 1)
                     + 0.05 * math.sin(i * 12.9898) ) for i in range(n)]


def ramp(n, lo, hi):
    return [lo + (hi - lo) * i / n for i in range(n)]


MODELS = {
    "ocr-det": [("x", F32, [1, 3, 64, 64], lambda: image(3, 64, 64))],
    "ocr-cls": [("x", F32, [1, 3, 48, 96], lambda: image(3, 48, 96))],
    "ocr-rec": [("x", F32, [1, 3, 48, 80], lambda: image(3, 48, 80))],
    "silero-vad-v5": [("input", F32, [1, 512], lambda: audio(512, 0.5)),
                      ("state", F32, [2, 1, 128], lambda: [0.0] * 256),
                      ("sr", I64, [], lambda: [16000])],
    "silero-vad-legacy": [("input", F32, [1, 512], lambda: audio(512, 0.5)),
                          ("sr", I64, [], lambda: [16000]),
                          ("h", F32, [2, 1, 64], lambda: [0.0] * 128),
                          ("c", F32, [2, 1, 64], lambda: [0.0] * 128)],
    "oww-melspectrogram": [("input", F32, [1, 1280], lambda: audio(1280, 8000.0))],
    "oww-embedding": [("input_1", F32, [1, 76, 32, 1], lambda: [2.0 + math.sin(i * 0.37) for i in range(76 * 32)])],
    "oww-hey-jarvis": [("x.1", F32, [1, 16, 96], lambda: [math.sin(i * 0.11) for i in range(16 * 96)])],
    "minilm-l6": [("input_ids", I64, [1, 8], lambda: [101, 7592, 2088, 2003, 1037, 3231, 1012, 102]),
                  ("attention_mask", I64, [1, 8], lambda: [1] * 8),
                  ("token_type_ids", I64, [1, 8], lambda: [0] * 8)],
}


def main():
    name, out = sys.argv[1], sys.argv[2]
    if name not in MODELS:
        sys.exit(f"make-inputs: no inputs known for '{name}' (known: {', '.join(MODELS)})")
    os.makedirs(out, exist_ok=True)
    for tname, dtype, dims, make in MODELS[name]:
        fname = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in tname) + ".pb"
        with open(os.path.join(out, fname), "wb") as f:
            f.write(tensor(tname, dtype, dims, make()))


main()
