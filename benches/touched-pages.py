#!/usr/bin/env python3
"""Which crates the resident pages of a running sidekey belong to.

    benches/touched-pages.py PID [BINARY [ROWS]]

Reads /proc/PID/maps and /proc/PID/pagemap (root, or CAP_SYS_ADMIN, to see the page
frames; the present bit is enough here) for the binary's file mappings, and `nm -S -C` for
its symbols. Each crate's share of the binary's code (the sum of its symbol sizes, what
cargo-bloat's `--crates` reports) is printed next to its share of the resident pages. Each resident page of the text segment is split between the symbols it holds,
by bytes, and each symbol is charged to a crate: the first path segment of its demangled
name (generic instances go to the innermost crate named in angle brackets when the outer
one is core/alloc/std). Also prints the binary's size by section and the anonymous and
file-backed RSS from smaps_rollup. Only reads /proc; nothing is written.
"""

import bisect
import collections
import re
import struct
import subprocess
import sys

PAGE = 4096


def mappings(pid, binary):
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[5] != binary:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], int(parts[2], 16)))
    return out


def resident(pid, lo, hi):
    pages = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(lo // PAGE * 8)
        data = f.read((hi - lo) // PAGE * 8)
    for i in range(len(data) // 8):
        (entry,) = struct.unpack_from("<Q", data, i * 8)
        if entry >> 63 & 1:
            pages.append(lo + i * PAGE)
    return pages


GENERIC = {"core", "alloc", "std", "<", ""}


def crate_of(name):
    name = name.strip()
    m = re.match(r"^<?\s*([A-Za-z_][A-Za-z0-9_]*)::", name)
    first = m.group(1) if m else ""
    if first in GENERIC or name.startswith("<"):
        inner = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
        for c in inner:
            if c not in {"core", "alloc", "std"}:
                return c
        return first or "other"
    return first or "other"


def symbols(binary):
    out = subprocess.run(
        ["nm", "-S", "-C", "--defined-only", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4 or parts[2] not in "tTwW":
            continue
        try:
            addr, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        if size:
            syms.append((addr, size, crate_of(parts[3])))
    syms.sort()
    return syms


def sections(binary):
    out = subprocess.run(["size", "-A", binary], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            rows[parts[0]] = int(parts[1])
    return rows


def main():
    pid = sys.argv[1]
    binary = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else subprocess.run(
        ["readlink", f"/proc/{pid}/exe"], capture_output=True, text=True).stdout.strip()
    maps = mappings(pid, binary)
    if not maps:
        sys.exit(f"no mapping of {binary} in {pid}")
    # The executable mapping's file offset tells where symbol addresses land in memory.
    syms = symbols(binary)
    starts = [s[0] for s in syms]
    by_crate = collections.Counter()
    seg_pages = collections.Counter()
    base = min(lo - off for lo, _, _, off in maps)
    for lo, hi, perms, off in maps:
        pages = resident(pid, lo, hi)
        seg_pages[perms] += len(pages)
        if "x" not in perms:
            continue
        for page in pages:
            vlo, vhi = page - base, page - base + PAGE
            i = max(bisect.bisect_right(starts, vlo) - 1, 0)
            covered = 0
            while i < len(syms) and syms[i][0] < vhi:
                a, size, crate = syms[i]
                overlap = min(a + size, vhi) - max(a, vlo)
                if overlap > 0:
                    by_crate[crate] += overlap
                    covered += overlap
                i += 1
            if covered < PAGE:
                by_crate["(padding, no symbol)"] += PAGE - covered
    print(f"# {binary}, pid {pid}")
    print("# binary sections (bytes):", ", ".join(f"{k} {v}" for k, v in sections(binary).items()
                                              if k in (".text", ".rodata", ".eh_frame", ".data.rel.ro", ".data", ".bss")))
    print("# resident pages of the binary by mapping:", ", ".join(f"{p} {n * 4} kB" for p, n in seg_pages.items()))
    with open(f"/proc/{pid}/smaps_rollup") as f:
        roll = {l.split(":")[0]: l.split(":")[1].strip() for l in f if ":" in l}
    print(f"# RSS {roll.get('Rss')}: anonymous {roll.get('Anonymous')}, file {roll.get('Rss_File', '?')}")
    total = sum(by_crate.values())
    in_binary = collections.Counter()
    for _, size, crate in syms:
        in_binary[crate] += size
    code = sum(in_binary.values())
    print(f"# code in symbols {code / 1024:.0f} kB, resident text {total / 1024:.0f} kB")
    print("crate binary_text_kB share resident_text_kB share")
    # Ordered by size in the binary: a big crate with few resident pages is on a cold path.
    for crate, size in in_binary.most_common(int(sys.argv[3]) if len(sys.argv) > 3 else 30):
        b = by_crate[crate]
        print(f"{crate} {size / 1024:.0f} {100 * size / code:.1f}% {b / 1024:.0f} {100 * b / total:.1f}%")
    print(f"(padding, no symbol) - - {by_crate['(padding, no symbol)'] / 1024:.0f} "
          f"{100 * by_crate['(padding, no symbol)'] / total:.1f}%")


if __name__ == "__main__":
    main()
