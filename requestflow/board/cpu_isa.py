"""The CPU's instruction-set extensions that change how fast a MobileNet runs (issue #20): on x86 AVX2, FMA,
AVX-512 and which of its subsets, AVX-VNNI and AMX; on Arm NEON (ASIMD), dotprod, fp16, i8mm, bf16, SVE, SVE2 and
SME. Read from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``), else, on aarch64, from the auxiliary vector's
hwcaps (``/proc/self/auxv``): the same names the kernel prints. Only these flags are kept, not the whole list: the
machine block goes into every result document.

``isa(root)`` gives ``{"source", "flags", "summary"}`` (``summary`` a short line for the scoreboard, e.g.
``AVX2 FMA AVX-512(F,BW,DQ,VL,VNNI) AMX(TILE,INT8,BF16)``), or None when nothing could be read.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

# the kernel's names of the flags kept, in the order the summary lists them
X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_vnni_int8",
             "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
             "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex")
ARM_FLAGS = ("neon", "asimd", "asimdhp", "asimddp", "asimdfhm", "asimdrdm", "i8mm", "bf16",
             "sve", "sve2", "svei8mm", "svebf16", "sme", "sme2")
# the AVX-512 subsets and AMX parts the summary names (those oneDNN and XNNPACK choose kernels by); all kept ones
# stay in ``flags``
X86_SUMMARY = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
# how the summary names an Arm flag (the rest are not shown there: they stay in ``flags``)
ARM_SUMMARY = {"neon": "NEON", "asimd": "NEON", "asimddp": "dotprod", "asimdhp": "fp16", "i8mm": "i8mm",
               "bf16": "bf16", "sve": "SVE", "sve2": "SVE2", "sme": "SME", "sme2": "SME2"}

# aarch64 hwcap bits (linux/arch/arm64/include/uapi/asm/hwcap.h): AT_HWCAP = 16, AT_HWCAP2 = 26
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP = {1: "asimd", 10: "asimdhp", 12: "asimdrdm", 20: "asimddp", 22: "sve", 23: "asimdfhm"}
_HWCAP2 = {1: "sve2", 9: "svei8mm", 12: "svebf16", 13: "i8mm", 14: "bf16", 23: "sme", 37: "sme2"}


def isa(root: str | Path = "/", arch: str | None = None) -> dict | None:
    """The kept flags of the CPU of ``root`` (a fake tree in tests); None when neither /proc/cpuinfo's flags or
    Features nor (aarch64) the hwcaps could be read."""
    root = Path(root)
    try:
        cpuinfo = (root / "proc/cpuinfo").read_text()
    except (OSError, UnicodeDecodeError):
        cpuinfo = ""
    match = re.search(r"^(flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    if match:
        words, source = set(match.group(2).split()), f"/proc/cpuinfo {match.group(1)}"
    elif arch in (None, "aarch64", "arm64"):
        words, source = _hwcaps(root / "proc/self/auxv"), "hwcaps (/proc/self/auxv)"
        if words is None:
            return None
    else:
        return None
    x86 = match is not None and match.group(1) == "flags"
    kept = [flag for flag in (X86_FLAGS if x86 else ARM_FLAGS) if flag in words]
    return {"source": source, "flags": kept, "summary": summary(kept)}


def summary(flags: list[str]) -> str:
    """A short line of what ``flags`` hold: ``AVX2 FMA AVX-512(F,BW,...) AMX(TILE,INT8)``, ``NEON dotprod SVE``;
    ``-`` for none of them."""
    have = set(flags)
    if have & set(X86_FLAGS):
        words = [name.upper() for name in ("avx2", "fma") if name in have]
        words += ["AVX-VNNI"] if "avx_vnni" in have else []
        for prefix, shown in (("avx512", "AVX-512"), ("amx_", "AMX")):
            subsets = [flag.removeprefix(prefix).lstrip("_").upper() for flag in X86_SUMMARY
                       if flag.startswith(prefix) and flag in have]
            if subsets:
                words.append(f"{shown}({','.join(subsets)})")
        return " ".join(words) or "-"
    words: list[str] = []
    for flag in ARM_FLAGS:
        name = ARM_SUMMARY.get(flag)
        if flag in have and name and name not in words:
            words.append(name)
    return " ".join(words) or "-"


def _hwcaps(path: Path) -> set[str] | None:
    """The aarch64 flags the auxiliary vector's AT_HWCAP and AT_HWCAP2 set; None when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    values = dict(struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]))
    if _AT_HWCAP not in values:
        return None
    words = {name for bit, name in _HWCAP.items() if values[_AT_HWCAP] >> bit & 1}
    words |= {name for bit, name in _HWCAP2.items() if values.get(_AT_HWCAP2, 0) >> bit & 1}
    return words
