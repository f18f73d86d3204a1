//! The register tile: `vdpbf16ps` over packed operands.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Job, CHUNK_PAIRS};

/// Chunk by chunk of `k`: each B panel's chunk against each A panel's.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn run<const MR: usize, const NV: usize>(
    job: &Job,
    row_panels: Range<usize>,
    col_panels: Range<usize>,
    accumulate: bool,
) {
    let (a, b) = (job.a, job.b);
    let nr = 16 * NV;
    let pairs = a.pairs;
    let mut p0 = 0;
    let mut first = true;
    while p0 < pairs.max(1) {
        let count = CHUNK_PAIRS.min(pairs - p0);
        for j in col_panels.clone() {
            let b_chunk = b.data.as_ptr().add((j * pairs + p0) * nr);
            let cols = nr.min(b.cols - j * nr);
            for i in row_panels.clone() {
                let a_chunk = a.data.as_ptr().add((i * pairs + p0) * MR);
                let rows = MR.min(a.rows - i * MR);
                let c = job.c.add(i * MR * job.ldc + j * nr);
                let add = accumulate || !first;
                if rows == MR && cols == nr {
                    tile::<MR, NV>(count, a_chunk, b_chunk, c, job.ldc, job.alpha, add);
                } else {
                    // An edge tile: full tile into a buffer, valid part copied.
                    let mut buf = [[0f32; 32]; MR];
                    let out = buf.as_mut_ptr() as *mut f32;
                    tile::<MR, NV>(count, a_chunk, b_chunk, out, 32, job.alpha, false);
                    for (r, row) in buf.iter().enumerate().take(rows) {
                        for (col, v) in row.iter().enumerate().take(cols) {
                            let dst = c.add(r * job.ldc + col);
                            *dst = if add { *dst + v } else { *v };
                        }
                    }
                }
            }
        }
        first = false;
        p0 += CHUNK_PAIRS;
    }
}

/// One `MR × 16·NV` tile of C over `pairs` k-pairs, sums in registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const MR: usize, const NV: usize>(
    pairs: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..pairs {
        let mut bv = [_mm512_setzero_si512(); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            *slot = _mm512_loadu_si512(b.add((p * NV + v) * 16) as *const _);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(*a.add(p * MR + r) as i32);
            for (sum, bv) in row.iter_mut().zip(bv.iter()) {
                *sum = _mm512_dpbf16_ps(*sum, as_bf16(av), as_bf16(*bv));
            }
        }
    }
    let scale = _mm512_set1_ps(alpha);
    for (r, row) in acc.iter().enumerate() {
        for (v, sum) in row.iter().enumerate() {
            let dst = c.add(r * ldc + 16 * v);
            let mut out = _mm512_mul_ps(*sum, scale);
            if accumulate {
                out = _mm512_add_ps(out, _mm512_loadu_ps(dst));
            }
            _mm512_storeu_ps(dst, out);
        }
    }
}

#[inline(always)]
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 plain bytes; vdpbf16ps reads them as 32 bf16.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
