"""The CPU's ISA extensions in the machine block (issue #20), from fake /proc/cpuinfo and auxv content: an x86
server with AVX-512 and AMX, an AVX2-only EPYC, an aarch64 board with dotprod and SVE, a 32-bit Arm with NEON."""

from __future__ import annotations

import struct

from requestflow.board.cpu_isa import isa, summary
from requestflow.board.machine import machine_info

XEON = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
        "flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2 avx512f avx512dq avx512ifma avx512cd "
        "avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq "
        "avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni arch_capabilities\n\nprocessor\t: 1\n")
EPYC = ("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
        "flags\t\t: fpu sse sse2 sse4_1 sse4_2 avx f16c avx2 fma bmi1 bmi2 sha_ni\n")
GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
             "fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat "
             "ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\n"
             "CPU part\t: 0xd40\n")
CORTEX_A53 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd03\n"
ARMV7 = ("processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n"
         "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae evtstrm\n")


def fake(root, cpuinfo: str):
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/cpuinfo").write_text(cpuinfo)
    return root


def test_x86_avx512_subsets_and_amx(tmp_path):
    found = isa(fake(tmp_path, XEON), "x86_64")
    assert found["source"] == "/proc/cpuinfo flags"
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"} <= set(found["flags"])
    assert "fpu" not in found["flags"] and "arch_capabilities" not in found["flags"]  # only the kept ones
    assert found["summary"] == "AVX2 FMA AVX-VNNI AVX-512(F,BW,DQ,VL,VNNI,BF16,FP16) AMX(TILE,INT8,BF16)"


def test_x86_avx2_only(tmp_path):
    found = isa(fake(tmp_path, EPYC), "x86_64")
    assert found["flags"] == ["sse4_2", "avx", "avx2", "fma", "f16c"]
    assert found["summary"] == "AVX2 FMA"


def test_aarch64_dotprod_sve_i8mm(tmp_path):
    found = isa(fake(tmp_path, GRAVITON3), "aarch64")
    assert found["source"] == "/proc/cpuinfo Features"
    assert found["flags"] == ["asimd", "asimdhp", "asimddp", "asimdfhm", "asimdrdm", "i8mm", "bf16", "sve",
                              "svei8mm", "svebf16"]
    assert found["summary"] == "NEON fp16 dotprod i8mm bf16 SVE"
    assert isa(fake(tmp_path, CORTEX_A53), "aarch64")["summary"] == "NEON"


def test_armv7_neon(tmp_path):
    assert isa(fake(tmp_path, ARMV7), "armv7l") == {"source": "/proc/cpuinfo Features", "flags": ["neon"],
                                                    "summary": "NEON"}


def test_aarch64_hwcaps_when_cpuinfo_has_no_features(tmp_path):
    fake(tmp_path, "processor\t: 0\n")
    (tmp_path / "proc/self").mkdir()
    hwcap = 1 << 1 | 1 << 20 | 1 << 22  # asimd, asimddp, sve
    hwcap2 = 1 << 1 | 1 << 13  # sve2, i8mm
    (tmp_path / "proc/self/auxv").write_bytes(struct.pack("<6Q", 16, hwcap, 26, hwcap2, 0, 0))
    found = isa(tmp_path, "aarch64")
    assert found == {"source": "hwcaps (/proc/self/auxv)", "flags": ["asimd", "asimddp", "i8mm", "sve", "sve2"],
                     "summary": "NEON dotprod i8mm SVE SVE2"}
    assert isa(tmp_path, "x86_64") is None  # an x86 auxv's bits mean other things: not read


def test_nothing_readable_is_null_and_machine_info_carries_it(tmp_path):
    assert isa(tmp_path, "aarch64") is None
    assert machine_info(tmp_path, with_opencl=False)["isa"] is None
    assert machine_info(fake(tmp_path, XEON), with_opencl=False)["isa"]["summary"].startswith("AVX2 FMA")
    assert summary([]) == "-"
