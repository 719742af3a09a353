"""Why a failed formatted check inside a compiled CUDA op crashes on some images (NOTES, seventh
session), and which build fixes it. Run from the repository root after `python setup.py build_ext
--inplace`, with the build log at BUILD_LOG (default $OUT/build.log):

    python3 benchmarks/toolchain_check.py [--relink]

Prints the toolchain facts (which compiler linked the library, what the library NEEDs, which
libstdc++ the process maps, the newest GLIBCXX each libstdc++ provides), then runs one bad op call in
a child process under several loader setups; `--relink` also re-links the library from the build
log's link line with a few flag variants and runs the bad and a good call against each one. The
built library is restored at the end.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

BAD = ("import torch, sparsekit._ext as e\n"
       "assert e.load() is not None, e.reason\n"
       "h = lambda *s: torch.randn(*s, device='cuda', dtype=torch.float16)\n"
       "try:\n"
       "    torch.ops.sparsekit.teal_matvec(h(2, 5), h(4, 3), 0.1)\n"
       "    print('NO ERROR')\n"
       "except RuntimeError as exc:\n"
       "    print('RAISED', str(exc).splitlines()[0][:100])\n")
GOOD = ("import torch, sparsekit._ext as e\n"
        "assert e.load() is not None, e.reason\n"
        "x = torch.randn(3, 64, device='cuda', dtype=torch.float16)\n"
        "w = torch.randn(64, 40, device='cuda', dtype=torch.float16)\n"
        "y = torch.ops.sparsekit.teal_matvec(x, w, 0.0)\n"
        "print('GOOD max err', float((y.float() - x.float() @ w.float()).abs().max()))\n")


def sh(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def child(code: str, pre: str = "", env: dict | None = None) -> str:
    r = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    out = (r.stdout.strip().splitlines() or [""])[-1]
    err = (r.stderr.strip().splitlines() or [""])[-1]
    return f"rc={r.returncode} {out} {err[:160] if r.returncode else ''}".strip()


def newest_glibcxx(path: str) -> str:
    if not path or not os.path.exists(path):
        return "-"
    vs = re.findall(r"GLIBCXX_3\.4\.(\d+)", sh(f"strings {shlex.quote(path)}"))
    return f"GLIBCXX_3.4.{max(map(int, vs))}" if vs else "-"


def facts(so: str) -> dict:
    print("## facts")
    for c in ("g++", "c++", "gcc"):
        p = shutil.which(c)
        print(f"{c}: {p} -> {os.path.realpath(p) if p else '-'}")
    gxx = shutil.which("g++") or ""
    if gxx:
        print(sh(f"file {shlex.quote(os.path.realpath(gxx))}"))
        with open(os.path.realpath(gxx), "rb") as f:
            head = f.read(3000)
        if head[:2] == b"#!":
            print("--- g++ is a script:\n" + head.decode(errors="replace"))
        print(sh("g++ --version | head -1"))
        print("g++ -v (last line):", sh("g++ -v 2>&1 | tail -1")[:600])
    gcc_so = sh("g++ -print-file-name=libstdc++.so.6") if gxx else ""
    gcc_a = sh("g++ -print-file-name=libstdc++.a") if gxx else ""
    print("g++ libstdc++.so.6:", gcc_so, os.path.realpath(gcc_so) if gcc_so else "", newest_glibcxx(gcc_so))
    print("g++ libstdc++.a:", gcc_a, os.path.exists(gcc_a))
    print("env CXX/CC/LDFLAGS:", os.environ.get("CXX"), os.environ.get("CC"), os.environ.get("LDFLAGS"))
    print(sh(f"readelf -d {so} | grep -E 'NEEDED|RPATH|RUNPATH'"))
    print("GLIBCXX/CXXABI versions the library asks for:",
          sorted(set(re.findall(r"(?:GLIBCXX|CXXABI)_[0-9.]+", sh(f"readelf -V {so}"))))[-4:])
    print("undefined C++ runtime symbols:", sh(f"nm -D --undefined-only {so} | grep -cE '__cxa|_ZNS|_ZNKS|_ZSt'"))
    print("defined C++ runtime symbols:", sh(f"nm -D --defined-only {so} | grep -cE '__cxa|_ZNS|_ZNKS|_ZSt'"))
    print(sh(f"nm -D {so} | grep -E ' (__cxa_throw|__gxx_personality_v0|_ZNSt7__cxx1119basic_ostringstream.*C1Ev)$'"))
    maps = sh(f"{sys.executable} -c \"import torch; print(open('/proc/self/maps').read())\" | grep -o '/[^ ]*libstdc++[^ ]*' | sort -u")
    print("libstdc++ mapped after `import torch`:", maps or "-")
    for p in maps.split():
        print("  ", p, newest_glibcxx(p))
    return {"gcc_so": gcc_so, "sys_so": (maps.split() or [""])[0]}


def link_line(log: str) -> list[str] | None:
    for line in open(log, errors="replace"):
        if " -shared " in line and "-o " in line and "_C." in line:
            return shlex.split(line.strip())
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relink", action="store_true")
    args = ap.parse_args()
    so = glob.glob("sparsekit/_C*.so")[0]
    f = facts(so)
    print("\n## the bad call under loader setups")
    print("plain:", child(BAD))
    for name, path in (("gcc", f["gcc_so"]), ("sys", f["sys_so"])):
        if path and os.path.exists(path):
            print(f"LD_PRELOAD {name} {path}:", child(BAD, env={"LD_PRELOAD": path}))
            pre = f"import ctypes; ctypes.CDLL({path!r}, mode=ctypes.RTLD_GLOBAL)\n"
            print(f"ctypes RTLD_GLOBAL {name} before torch:", child(BAD, pre))
    print("ctypes RTLD_GLOBAL libstdc++.so.6 after torch:",
          child(BAD, "import torch, ctypes; ctypes.CDLL('libstdc++.so.6', mode=ctypes.RTLD_GLOBAL)\n"))
    if not args.relink:
        return
    log = os.environ.get("BUILD_LOG") or os.path.join(os.environ.get("OUT", "."), "build.log")
    cmd = link_line(log)
    if cmd is None:
        print("no link line found in", log)
        return
    print("\n## relink variants\nlink:", " ".join(cmd)[:300], "...", " ".join(cmd[-12:]))
    backup = so + ".orig"
    shutil.copy2(so, backup)
    variants = {  # flags added to the link line (setup.py's own `--exclude-libs` is dropped unless kept)
        "as built": None,
        "without --exclude-libs": [],
        "-static-libstdc++ + exclude-libs": ["-static-libstdc++", "-Wl,--exclude-libs,ALL"],
        "no-as-needed -lstdc++": ["-Wl,--no-as-needed", "-lstdc++", "-Wl,--as-needed"],
        "explicit g++ libstdc++.so": [os.path.realpath(f["gcc_so"])] if f["gcc_so"] else [],
    }
    try:
        for name, extra in variants.items():
            target = f"/tmp/relink_{len(name)}_{abs(hash(name))}.so"
            keep = [a for a in cmd if extra is None or "--exclude-libs" not in a]
            i = keep.index("-o")
            c = keep[:i] + (extra or []) + ["-o", target] + keep[i + 2:]
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode:
                print(f"{name}: link failed: {r.stderr.strip()[-300:]}")
                continue
            needed = re.findall(r"\[(libstdc\+\+[^\]]*)\]", sh(f"readelf -d {target}"))
            shutil.copy2(target, so)
            print(f"{name}: NEEDED libstdc++ {needed or 'none'}; bad: {child(BAD)}; good: {child(GOOD)}")
    finally:
        shutil.copy2(backup, so)
        os.remove(backup)


if __name__ == "__main__":
    main()
