#!/usr/bin/env python3
"""Prints the size of the release wasm, raw / gzip / brotli: each file, then what each page
downloads (the main module plus the split files its route needs, as the split manifest lists
them). Usage: scripts/wasm-size.py [site pkg dir, default target/site/pkg]."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path


def sizes(path: Path) -> tuple[int, int, int | None]:
    data = path.read_bytes()
    brotli = None
    if shutil.which("brotli"):
        brotli = len(subprocess.run(["brotli", "-c", "-q", "11", str(path)], capture_output=True, check=True).stdout)
    return len(data), len(gzip.compress(data, 9)), brotli


def show(name: str, raw: int, gz: int, br: int | None) -> None:
    brotli = f"{br:>9,}" if br is not None else "  (no brotli CLI)"
    print(f"{name:<48} {raw:>10,} {gz:>9,} {brotli}")


def main() -> int:
    pkg = Path(sys.argv[1] if len(sys.argv) > 1 else "target/site/pkg")
    main_wasm = pkg / "dagstream.wasm"
    if not main_wasm.exists():
        print(f"{main_wasm} is missing: run `make build` first", file=sys.stderr)
        return 1
    files = {path.stem: sizes(path) for path in sorted(pkg.glob("*.wasm"))}
    print(f"{'file':<48} {'raw':>10} {'gzip':>9} {'brotli':>9}")
    for stem, (raw, gz, br) in files.items():
        show(stem + ".wasm", raw, gz, br)
    manifest = pkg / "__wasm_split_manifest.json"
    pages = json.loads(manifest.read_text()) if manifest.exists() else {}
    print(f"\n{'page code (main module + its split files)':<48} {'raw':>10} {'gzip':>9} {'brotli':>9}")
    for lazy_function, parts in sorted(pages.items()):
        parts = ["dagstream", *parts]
        raw = sum(files[p][0] for p in parts)
        gz = sum(files[p][1] for p in parts)
        br = None if any(files[p][2] is None for p in parts) else sum(files[p][2] for p in parts)
        show(lazy_function.strip("_").rsplit("_", 1)[0], raw, gz, br)
    total = [sum(s[i] for s in files.values()) for i in range(2)]
    br_total = None if any(s[2] is None for s in files.values()) else sum(s[2] for s in files.values())
    show("all files", total[0], total[1], br_total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
