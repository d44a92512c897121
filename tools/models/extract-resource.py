#!/usr/bin/env python3
"""Copies one embedded (manifest) resource out of a .NET assembly without loading it.

usage: extract-resource.py ASSEMBLY.dll RESOURCE_NAME OUT_FILE

Walks the PE headers to the CLI header, reads the #~ metadata stream's ManifestResource table to find the
resource's offset, then copies the length-prefixed blob from the assembly's resources area.
"""
import struct
import sys


def main():
    dll, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
    data = open(dll, "rb").read()
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        sys.exit(f"{dll}: not a PE file")
    nsec = struct.unpack_from("<H", data, pe + 6)[0]
    opt_size = struct.unpack_from("<H", data, pe + 20)[0]
    opt = pe + 24
    magic = struct.unpack_from("<H", data, opt)[0]
    dirs = opt + (96 if magic == 0x10B else 112)
    sections = []
    sec = opt + opt_size
    for i in range(nsec):
        vsize, va, rsize, raw = struct.unpack_from("<IIII", data, sec + i * 40 + 8)
        sections.append((va, max(vsize, rsize), raw))

    def off(rva):
        for va, size, raw in sections:
            if va <= rva < va + size:
                return rva - va + raw
        sys.exit(f"{dll}: RVA {rva:#x} is in no section")

    cli_rva = struct.unpack_from("<I", data, dirs + 14 * 8)[0]
    cli = off(cli_rva)
    md_rva, _ = struct.unpack_from("<II", data, cli + 8)
    res_rva, res_size = struct.unpack_from("<II", data, cli + 24)
    md = off(md_rva)
    if data[md:md + 4] != b"BSJB":
        sys.exit(f"{dll}: no CLI metadata")
    vlen = struct.unpack_from("<I", data, md + 12)[0]
    p = md + 16 + vlen + 2
    nstreams = struct.unpack_from("<H", data, p)[0]
    p += 2
    streams = {}
    for _ in range(nstreams):
        o, s = struct.unpack_from("<II", data, p)
        p += 8
        e = data.index(b"\0", p)
        sname = data[p:e].decode()
        p = (e + 4) & ~3
        streams[sname] = (md + o, s)
    tables_at, _ = streams["#~"]
    strings_at, _ = streams["#Strings"]
    heap_sizes = data[tables_at + 6]
    valid = struct.unpack_from("<Q", data, tables_at + 8)[0]
    rows = {}
    q = tables_at + 24
    for t in range(64):
        if valid >> t & 1:
            rows[t] = struct.unpack_from("<I", data, q)[0]
            q += 4
    str_idx = 4 if heap_sizes & 1 else 2
    guid_idx = 4 if heap_sizes & 2 else 2
    blob_idx = 4 if heap_sizes & 4 else 2

    def idx(*tables):
        return 4 if max(rows.get(t, 0) for t in tables) >= 2 ** 16 else 2

    def coded(bits, *tables):
        return 4 if max(rows.get(t, 0) for t in tables) >= 2 ** (16 - bits) else 2

    tdor = coded(2, 0x02, 0x01, 0x1B)
    hcat = coded(5, 0x06, 0x04, 0x17, 0x08, 0x02, 0x01, 0x09, 0x14, 0x22, 0x23, 0x26, 0x27, 0x28, 0x2A, 0x2C, 0x2B)
    hcustom = coded(3, 0x06, 0x0A)
    hfm = coded(1, 0x04, 0x08)
    hdecl = coded(2, 0x02, 0x06, 0x20)
    mrp = coded(3, 0x02, 0x01, 0x1A, 0x06, 0x1B)
    memf = coded(1, 0x04, 0x06)
    ms = coded(1, 0x14, 0x17)
    mdor = coded(1, 0x06, 0x0A)
    impl = coded(2, 0x26, 0x23, 0x27)
    rscope = coded(2, 0x00, 0x1A, 0x23, 0x01)
    tomd = coded(1, 0x02, 0x06)
    s, g, b = str_idx, guid_idx, blob_idx
    widths = {
        0x00: 2 + s + g + g + g, 0x01: rscope + s + s, 0x02: 4 + s + s + tdor + idx(0x04) + idx(0x06),
        0x03: idx(0x04), 0x04: 2 + s + b, 0x05: idx(0x06), 0x06: 4 + 2 + 2 + s + b + idx(0x08),
        0x07: idx(0x08), 0x08: 2 + 2 + s, 0x09: idx(0x02) + tdor, 0x0A: mrp + s + b, 0x0B: 2 + hcat + b,
        0x0C: hcat + hcustom + b, 0x0D: hfm + b, 0x0E: 2 + hdecl + b, 0x0F: 2 + 4 + idx(0x02),
        0x10: 4 + idx(0x04), 0x11: b, 0x12: idx(0x02) + idx(0x14), 0x13: idx(0x14), 0x14: 2 + s + tdor,
        0x15: idx(0x02) + idx(0x17), 0x16: idx(0x17), 0x17: 2 + s + b, 0x18: 2 + idx(0x06) + ms,
        0x19: idx(0x02) + mdor + mdor, 0x1A: s, 0x1B: b, 0x1C: 2 + memf + s + idx(0x1A), 0x1D: 4 + idx(0x04),
        0x1E: 4 + 4, 0x1F: 4, 0x20: 4 + 2 + 2 + 2 + 2 + 4 + b + s + s, 0x21: 4, 0x22: 4 + 4 + 4,
        0x23: 2 + 2 + 2 + 2 + 4 + b + s + s + b, 0x24: 4 + idx(0x23), 0x25: 4 + 4 + 4 + idx(0x23),
        0x26: 4 + s + b, 0x27: 4 + 4 + s + s + impl, 0x28: 4 + 4 + s + impl, 0x29: idx(0x02) + idx(0x02),
        0x2A: 2 + 2 + tomd + s, 0x2B: mdor + b, 0x2C: idx(0x2A) + tdor,
    }
    at = q
    for t in range(0x28):
        if t in rows:
            at += rows[t] * widths[t]
    rd = lambda pos, w: struct.unpack_from("<I" if w == 4 else "<H", data, pos)[0]
    for r in range(rows.get(0x28, 0)):
        row = at + r * widths[0x28]
        offset = struct.unpack_from("<I", data, row)[0]
        implementation = rd(row + 8 + s, impl)
        nm = rd(row + 8, s)
        e = data.index(b"\0", strings_at + nm)
        rname = data[strings_at + nm:e].decode()
        if rname == name and implementation == 0:
            start = off(res_rva) + offset
            length = struct.unpack_from("<I", data, start)[0]
            with open(out, "wb") as f:
                f.write(data[start + 4:start + 4 + length])
            return
    sys.exit(f"{dll}: no embedded resource named {name}")


main()
