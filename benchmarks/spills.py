"""Where the compiled kernels touch local memory (register spills), by source line (run on the GPU machine).

    python benchmarks/spills.py [--match matvec_kernel]

Extracts the cubins of the built extension (``cuobjdump -xelf all``), disassembles them with line information
(``nvdisasm -g``; the extension is built with ``-lineinfo``) and, per kernel whose mangled name contains
``--match``, counts the local loads and stores (LDL/STL) at each source line: a spill inside the weight loop
costs every iteration, one in the prologue costs once per block.
"""
from __future__ import annotations

import argparse
import collections
import glob
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # piped into head: stop quietly
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--match", default="matvec_kernel", help="substring of the kernels' mangled names")
    ap.add_argument("--lib", default=None, help="the extension (default: sparsekit/_C*.so)")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    lib = args.lib or next(iter(glob.glob(str(root / "sparsekit" / "_C*.so"))), None)
    if lib is None:
        sys.exit("no built extension: run python setup.py build_ext --inplace")
    missing = [tool for tool in ("cuobjdump", "nvdisasm") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"{' and '.join(missing)} not found: this needs the CUDA toolkit's binary utilities on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["cuobjdump", "-xelf", "all", str(Path(lib).resolve())], cwd=tmp, capture_output=True)
        cubins = sorted(Path(tmp).glob("*.cubin"))
        if not cubins:
            sys.exit(f"{lib} holds no CUDA kernels (built without CUDA?)")
        for cubin in cubins:
            text = subprocess.run(["nvdisasm", "-g", str(cubin)], capture_output=True, text=True).stdout
            fun, where, counts = None, "?", {}
            for line in text.splitlines():
                m = re.match(r"\s*\.text\.(\S+):", line)
                if m:
                    fun = m.group(1)
                    continue
                m = re.search(r'//## File "([^"]+)", line (\d+)', line)
                if m:
                    where = f"{Path(m.group(1)).name}:{m.group(2)}"
                    continue
                m = re.search(r"\b(LDL|STL)\b", line) if fun and args.match in fun else None
                if m:
                    counts.setdefault(fun, collections.Counter())[(where, m.group(1))] += 1
            for fun, c in counts.items():
                print(f"## {fun} ({cubin.name})")
                for (where, op), n in sorted(c.items()):
                    print(f"  {where:28s} {op} x{n}")


if __name__ == "__main__":
    main()
