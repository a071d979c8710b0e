"""A fused CPU kernel for SPD's causal-importance MLPs: forward and backward in one pass each, nothing stored.

SPD (Bushnaq, Braun et al. 2025) gives every subcomponent its own scalar MLP
s ↦ w_outᵀ GELU(w_in·s + b_in) + b_out with an exact (erf) GELU. On a toy such as TMS 40-10
(400 gates × 4,096 inputs × 16 hidden units) these MLPs are most of a training step, and in plain
PyTorch they write and re-read a [gates, inputs, hidden] tensor several times (pre-activation,
GELU, GELU's derivative, their products) while computing erf twice.

This kernel computes, per gate and input, the hidden pre-activation, the normal CDF Φ and density φ
(GELU(h) = h·Φ(h), GELU'(h) = Φ(h) + h·φ(h)) and sums over the hidden units at once:

* forward: the output and ∂output/∂s (saved: [gates, inputs], a sixteenth of the hidden tensor);
* backward: ∂/∂w_out = Σ_x g·GELU(h), ∂/∂b_in = w_out Σ_x g·GELU'(h), ∂/∂w_in = w_out Σ_x g·s·GELU'(h),
  recomputing h, Φ and φ instead of reading them back; ∂/∂s is g times the saved slope.

Φ and φ share one exponential: erfc(z) = e^{−z²}·erfcx(z) with e^{−z²} = e^{−h²/2} (z = |h|/√2), and
erfcx is t·P(t) with t = 1/(1 + z/2) and P a degree-10 polynomial fitted here (relative error 2·10⁻⁷ in
float); exp is Cephes' single-precision polynomial. Both are branch-free, so the compiler vectorises the
loops over gates; the results agree with PyTorch's float32 GELU to float precision (tests/test_spd_fused.py).

The C source below is compiled on first use with the system C compiler (`cc`, or $CC) into
`cache_dir("kernels")` (one library per source, flags, compiler and CPU) and loaded with ctypes. With
several torch threads the live rows are split into one range per thread, run on a small thread pool
(ctypes releases the GIL), the backward's partial sums added afterwards. Without a compiler, for other
dtypes or devices, or with ANATOMIST_FUSED_GATES=0, `available()` is False and SPD uses its PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anatomist.core.paths import cache_dir

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* exp(x) in float by Cephes' expf polynomial (about 1 ulp); branch-free so that loops vectorise. */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest with the 1.5 * 2^23 trick (vectorises, unlike floorf) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

typedef struct { float cdf, pdf; } normal_t;

/* The standard normal CDF and density at h from one exp: with z = |h|/sqrt(2) and t = 1/(1 + z/2),
   erfc(z) = exp(-z^2) erfcx(z) and exp(-z^2) = exp(-h^2/2) is the density's own exponential; erfcx(z) is
   t P(t), P a degree-10 polynomial fitted to it by relative least squares on t in (0, 1] (relative error
   1.2e-8 in double, 2e-7 evaluated in float). */
static inline normal_t normal_at(float h) {
    float e = exp_f(-0.5f * h * h);
    float t = 1.0f / (1.0f + 0.35355339059327376f * __builtin_fabsf(h));
    float p = 4.319681497e-02f;
    p = p * t - 2.347406407e-01f;
    p = p * t + 4.937102874e-01f;
    p = p * t - 4.549926396e-01f;
    p = p * t + 1.321908707e-01f;
    p = p * t - 5.921779489e-02f;
    p = p * t + 9.346430084e-02f;
    p = p * t + 1.753156530e-01f;
    p = p * t + 2.468846051e-01f;
    p = p * t + 2.820937525e-01f;
    p = p * t + 2.820947952e-01f;
    float half_erfc = 0.5f * t * p * e;
    normal_t r = {h < 0.0f ? half_erfc : 1.0f - half_erfc, 0.39894228040143268f * e};
    return r;
}

/* Row-major: s, out, grad, g_s are [rows, k] (gate i of input row m at m * k + i), slope [n_live, k], the
   weights transposed to [d, k]; only the rows listed in `live` are touched. Vectorised over the gates. */

/* out[m, i] = b_out[i] + sum_j w_out[j, i] GELU(w_in[j, i] s[m, i] + b_in[j, i]); slope[r, i] = d out / d s. */
void gate_forward(int64_t n_live, int64_t k, int64_t d, const int64_t *live, const float *s, const float *w_in,
                  const float *b_in, const float *w_out, const float *b_out, float *out, float *slope) {
    for (int64_t r = 0; r < n_live; r++) {
        const float *__restrict sm = s + live[r] * k;
        float *__restrict om = out + live[r] * k;
        float *__restrict dm = slope + r * k;
        for (int64_t i = 0; i < k; i++) {
            om[i] = b_out[i];
            dm[i] = 0.0f;
        }
        for (int64_t j = 0; j < d; j++) {
            const float *__restrict wi = w_in + j * k, *__restrict bi = b_in + j * k, *__restrict wo = w_out + j * k;
            #pragma omp simd
            for (int64_t i = 0; i < k; i++) {
                float h = wi[i] * sm[i] + bi[i];
                normal_t nd = normal_at(h);
                om[i] += h * nd.cdf * wo[i];
                dm[i] += (nd.cdf + h * nd.pdf) * wo[i] * wi[i];
            }
        }
    }
}

/* For output gradient g: g_s = g * slope on the live rows, and sums over the live rows of g * GELU(h) (into
   sum_a), g * GELU'(h) (sum_p), g * s * GELU'(h) (sum_sp), each [d, k], and of g itself (sum_g, [k]). Rows
   are summed in blocks of BLOCK into fresh partial sums, which keeps float rounding near a pairwise sum's. */
#define BLOCK 256
void gate_backward(int64_t n_live, int64_t k, int64_t d, const int64_t *live, const float *g, const float *s,
                   const float *w_in, const float *b_in, const float *slope, float *g_s, float *sum_a,
                   float *sum_p, float *sum_sp, float *sum_g, float *scratch) {
    float *__restrict pa = scratch, *__restrict pp = scratch + d * k, *__restrict psp = scratch + 2 * d * k;
    float *__restrict pg = scratch + 3 * d * k;
    for (int64_t start = 0; start < n_live; start += BLOCK) {
        memset(scratch, 0, sizeof(float) * (3 * d * k + k));
        int64_t stop = start + BLOCK < n_live ? start + BLOCK : n_live;
        for (int64_t r = start; r < stop; r++) {
            const float *__restrict sm = s + live[r] * k, *__restrict gm = g + live[r] * k;
            const float *__restrict dm = slope + r * k;
            float *__restrict gsm = g_s + live[r] * k;
            #pragma omp simd
            for (int64_t i = 0; i < k; i++) {
                gsm[i] = gm[i] * dm[i];
                pg[i] += gm[i];
            }
            for (int64_t j = 0; j < d; j++) {
                const float *__restrict wi = w_in + j * k, *__restrict bi = b_in + j * k;
                float *__restrict a = pa + j * k, *__restrict p = pp + j * k, *__restrict sp = psp + j * k;
                #pragma omp simd
                for (int64_t i = 0; i < k; i++) {
                    float h = wi[i] * sm[i] + bi[i];
                    normal_t nd = normal_at(h);
                    float gp = gm[i] * (nd.cdf + h * nd.pdf);
                    a[i] += gm[i] * h * nd.cdf;
                    p[i] += gp;
                    sp[i] += gp * sm[i];
                }
            }
        }
        #pragma omp simd
        for (int64_t e = 0; e < d * k; e++) {
            sum_a[e] += pa[e];
            sum_p[e] += pp[e];
            sum_sp[e] += psp[e];
        }
        #pragma omp simd
        for (int64_t i = 0; i < k; i++) sum_g[i] += pg[i];
    }
}
"""

# -fno-trapping-math lets the compiler turn the selects into blends (vectorised loops); no fast-math, so
# the arithmetic is evaluated as written
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC"]
_lock = threading.Lock()
_library: list[ctypes.CDLL | None] = []  # [] not tried yet, [None] unavailable, [lib] loaded
_pool: list[tuple[int, ThreadPoolExecutor]] = []  # the worker threads of multi-threaded calls, made on first need
MIN_ROWS = 256  # live rows per thread below which a call stays on one thread


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_signature() -> str:
    """The CPU's model and feature flags: a library built with -march=native only runs where they match
    (a cache folder shared by several machines keeps one library per kind of CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))


def _build(compiler: str) -> ctypes.CDLL | None:
    """Compile SOURCE (once per source, flags, compiler and CPU: the file name is their hash) and load it."""
    key = hashlib.sha256("\n".join([SOURCE, *FLAGS, compiler, _cpu_signature()]).encode()).hexdigest()[:16]
    folder = cache_dir("kernels")
    lib = folder / f"spd_gates_{key}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src, out = Path(tmp) / "gates.c", Path(tmp) / "gates.so"
            src.write_text(SOURCE)
            done = subprocess.run([compiler, *FLAGS, "-o", str(out), str(src)], capture_output=True)
            if done.returncode != 0:
                return None
            os.replace(out, lib)  # atomic: a concurrent process sees the whole library or none
    return _declare(ctypes.CDLL(str(lib)))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.gate_forward.argtypes = [i64, i64, i64] + [ptr] * 8
    lib.gate_backward.argtypes = [i64, i64, i64] + [ptr] * 12
    lib.gate_forward.restype = lib.gate_backward.restype = None
    return lib


def _load() -> ctypes.CDLL | None:
    with _lock:
        if not _library:
            compiler = _compiler()
            try:
                _library.append(_build(compiler) if compiler else None)
            except OSError:  # an unwritable cache or a library that will not load: the PyTorch path
                _library.append(None)
        return _library[0]


def available(*tensors: Tensor) -> bool:
    """True when the kernel can evaluate these tensors: float32 on the CPU, compiled, not switched off."""
    if os.environ.get("ANATOMIST_FUSED_GATES", "1") == "0":
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return _load() is not None


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _ready(*tensors: Tensor) -> list[Tensor]:
    return [t.detach().contiguous() for t in tensors]


def _row_chunks(n_live: int) -> list[tuple[int, int]]:
    """Ranges of live rows, one per torch intra-op thread (ctypes drops the GIL, so the chunks run in parallel;
    one thread: one range, a plain call). Chunks of fewer than MIN_ROWS rows are not worth a thread."""
    n = max(1, min(torch.get_num_threads(), n_live // MIN_ROWS))
    bounds = [n_live * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _run(chunks: list[tuple[int, int]], call: Any) -> None:
    """call(start, stop) for every chunk: directly for one, on the shared thread pool for several."""
    if len(chunks) == 1:
        call(*chunks[0])
        return
    with _lock:
        if not _pool or _pool[0][0] < len(chunks):
            _pool[:] = [(len(chunks), ThreadPoolExecutor(len(chunks), thread_name_prefix="spd-gates"))]
        pool = _pool[0][1]
    for done in [pool.submit(call, a, b) for a, b in chunks]:
        done.result()


def forward(
    s: Tensor, live: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor, out: Tensor
) -> Tensor:
    """Write the gate outputs of the rows `live` of s `[rows, k]` into those rows of `out` (in place), and
    return their derivatives in s, `[len(live), k]`; weights `[k, d]` and `[k]`."""
    lib = _load()
    assert lib is not None and out.is_contiguous(), "check gate_kernel.available() first; out must be contiguous"
    s, live, b_out = _ready(s, live, b_out)
    w_in, b_in, w_out = _ready(w_in.T, b_in.T, w_out.T)  # [d, k]: the loops run over gates
    (d, k), n_live = w_in.shape, live.numel()
    slope = s.new_empty(n_live, k)
    fixed = [_ptr(t) for t in (s, w_in, b_in, w_out, b_out, out)]
    _run(_row_chunks(n_live), lambda a, b: lib.gate_forward(b - a, k, d, _ptr(live[a:]), *fixed, _ptr(slope[a:])))
    return slope


def backward(
    grad: Tensor, s: Tensor, live: Tensor, w_in: Tensor, b_in: Tensor, slope: Tensor, g_s: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For the output gradient `grad` `[rows, k]`: write ∂/∂s of the live rows into `g_s` (in place) and return
    the sums over the live rows of g·GELU(h), g·GELU'(h) and g·s·GELU'(h) (each `[k, d]`) and of g (`[k]`)."""
    lib = _load()
    assert lib is not None and g_s.is_contiguous(), "check gate_kernel.available() first; g_s must be contiguous"
    grad, s, live, slope = _ready(grad, s, live, slope)
    w_in, b_in = _ready(w_in.T, b_in.T)
    (d, k), n_live = w_in.shape, live.numel()
    chunks = _row_chunks(n_live)
    sums = s.new_zeros(len(chunks), 3 * d * k + k)  # per chunk: three [d, k] sums, then the [k] sum of g
    scratch = s.new_empty(len(chunks), 3 * d * k + k)
    fixed = [_ptr(t) for t in (grad, s, w_in, b_in)]

    def call(a: int, b: int) -> None:
        i = chunks.index((a, b))
        parts = [sums[i, j * d * k:] for j in range(4)]
        lib.gate_backward(b - a, k, d, _ptr(live[a:]), *fixed, _ptr(slope[a:]), _ptr(g_s), *map(_ptr, parts),
                          _ptr(scratch[i]))

    _run(chunks, call)
    total = sums.sum(0)
    sum_a, sum_p, sum_sp = total[: 3 * d * k].view(3, d, k)
    return sum_a.T, sum_p.T, sum_sp.T, total[3 * d * k:]
