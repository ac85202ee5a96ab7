"""Measure this machine's fp32 FMA peak, in the same run as the benchmarks it scales.

A tiny C kernel (independent FMA chains in vector registers, one per thread) is built with
the system C compiler for the host (``-march=native``) and timed, with 512-bit vectors where
the CPU has AVX-512 (on CPUs with two 512-bit FMA units that is twice the AVX2 peak; Zen 4
splits a 512-bit FMA in two, so there both are the same). Without a C compiler the peak is
reported as unknown rather than guessed.

The bf16 peak is the same loop with ``vdpbf16ps`` (AVX512_BF16: 16 lanes, each a 2-term dot
product, counted as 4 flops). Measured on a 2-core Xeon with AMX and AVX512_BF16 (2026-11-30):
204 GFLOP/s, half its fp32 FMA peak (404 in the same run): there one ``vdpbf16ps`` issues
every other cycle, so bf16 sums no faster than fp32 FMAs; on Zen 4 it is twice the fp32 rate.
Where the CPU has AMX, the AMX peak is a loop of ``tdpbf16ps`` on four accumulator tiles
(16 x 16 x 32 multiply-adds each): 7063 GFLOP/s on the same 2 cores, 15x their fp32 peak
(457 in that run; benchmarks/2026-11-30-intel-xeon-amx-2t-bf16.md).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from ..support.targets import host_has_amx_bf16, host_has_bf16

_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#define CHAINS 12
#ifdef LEGO_BF16
#define LANES 16
#define FLOPS_PER_LANE 4
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA(acc, a, b) _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(a), \
                                        (__m512bh)_mm512_castps_si512(b))
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#elif defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
#define LANES 8
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
#ifndef FLOPS_PER_LANE
#define FLOPS_PER_LANE 2
#endif
int main(int argc, char **argv) {
  int threads = atoi(argv[1]);
  long iters = 40000000;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    float sink = 0;
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      vec acc[CHAINS];
      for (int i = 0; i < CHAINS; i++) acc[i] = SET1(i * 1e-3f);
      vec a = SET1(0.999f), b = SET1(1e-6f);
      for (long it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], a, b);
      float out[LANES];
      vec s = acc[0];
      for (int i = 1; i < CHAINS; i++) s = ADD(s, acc[i]);
      STORE(out, s);
      sink += out[0];
    }
    double seconds = omp_get_wtime() - t0;
    double gflops = (double)FLOPS_PER_LANE * LANES * CHAINS * (double)iters * threads / seconds / 1e9;
    if (gflops > best) best = gflops;
    if (sink == 1234.5f) printf(" ");
  }
  printf("%f\n", best);
  return 0;
}
"""

# Four accumulator tiles, each 16 x 16 fp32 += 16 x 32 bf16 by 32 x 16 bf16, after asking
# Linux for AMX's tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); prints 0
# when refused.
_AMX_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
typedef struct { unsigned char palette, start; unsigned char pad[14]; unsigned short colsb[16]; unsigned char rows[16]; } tilecfg;
int main(int argc, char **argv) {
  int threads = atoi(argv[1]); long iters = 4000000; double best = 0;
  if (syscall(SYS_arch_prctl, 0x1023, 18)) { printf("0\n"); return 0; }
  static char a[1024] __attribute__((aligned(64))), b[1024] __attribute__((aligned(64)));
  memset(a, 0, 1024); memset(b, 0, 1024);
  for (int rep = 0; rep < 3; rep++) {
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads)
    {
      tilecfg cfg; memset(&cfg, 0, sizeof cfg); cfg.palette = 1;
      for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
      _tile_loadconfig(&cfg);
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      _tile_loadd(4, a, 64); _tile_loadd(5, a, 64); _tile_loadd(6, b, 64); _tile_loadd(7, b, 64);
      for (long it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
      }
      float out[256]; _tile_stored(0, out, 64);
      _tile_release();
      if (out[0] == 1234.5f) printf(" ");
    }
    double g = 2.0 * 16 * 16 * 32 * 4 * (double)iters * threads / (omp_get_wtime() - t0) / 1e9;
    if (g > best) best = g;
  }
  printf("%f\n", best);
  return 0;
}
"""


def fma_peak_gflops(threads: int) -> float | None:
    """Measured fp32 FMA GFLOP/s with ``threads`` threads (AVX-512 where the CPU has it,
    else AVX2), or None if it cannot be measured here (no C compiler, or not an x86 CPU with
    AVX2 + FMA)."""
    return _measure(threads, [])


def bf16_peak_gflops(threads: int) -> float | None:
    """Measured ``vdpbf16ps`` GFLOP/s (a bf16 product and its fp32 sum: 2 flops) with
    ``threads`` threads, or None where the CPU lacks AVX512_BF16 or there is no C compiler."""
    return _measure(threads, ["-DLEGO_BF16", "-mavx512bf16"]) if host_has_bf16() else None


def amx_peak_gflops(threads: int) -> float | None:
    """Measured AMX ``tdpbf16ps`` GFLOP/s with ``threads`` threads, or None where the CPU
    lacks AMX's bf16 tiles, Linux refuses them, or there is no C compiler."""
    if not host_has_amx_bf16():
        return None
    return _measure(threads, ["-mamx-tile", "-mamx-bf16"], _AMX_SOURCE) or None


def _measure(threads: int, flags: list[str], source: str = _SOURCE) -> float | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
        with open(src, "w") as f:
            f.write(source.replace("#include <stdio.h>", "#include <stdio.h>\n#include <stdlib.h>"))
        try:
            subprocess.run([cc, "-O3", "-march=native", "-mavx2", "-mfma", *flags, "-fopenmp",
                            src, "-o", exe], check=True, capture_output=True, timeout=120)
            out = subprocess.run([exe, str(threads)], check=True, capture_output=True,
                                 text=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
    return float(out.stdout.strip())
