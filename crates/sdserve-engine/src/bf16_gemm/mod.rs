//! A bf16 matrix product for CPUs with AVX512-BF16 (`vdpbf16ps`).
//!
//! candle's CPU matmul has no bf16 kernel, so `--dtype bf16` on the CPU ran
//! no faster than f32. `vdpbf16ps` multiplies 32 bf16 pairs and adds them
//! into 16 f32 lanes in one instruction, twice the work of an f32 FMA. The
//! product here is `C = alpha · A·B (+ C)`, with f32 sums and f32 output:
//!
//! * both operands are packed per call into bf16 pairs along `k` ([`PackedA`]
//!   in panels of [`PackedB::a_panels`] rows, [`PackedB`] in panels of 16 or
//!   32 columns), rounding f32 sources to nearest even; packing costs
//!   `O(m·k + k·n)` against the product's `O(m·k·n)` and keeps no copy of a
//!   weight between calls (LoRA patches and memory plans see one weight);
//! * [`multiply`] walks `k` in chunks that keep one B panel in L1 and a group
//!   of A panels in L2, each tile of C in registers;
//! * where the CPU has AMX (Xeons since Sapphire Rapids) and passes a
//!   self-test, operands are packed for tiles instead and [`amx`] multiplies
//!   them with `tdpbf16ps` (16 times the work per instruction of
//!   `vdpbf16ps`), as PyTorch's bf16 autocast does through oneDNN.
//!   `SDSERVE_NO_AMX=1` keeps the `vdpbf16ps` kernel.
//!
//! Results equal the f64 product of the bf16-rounded operands up to f32
//! summation error, which the tests bound.

use std::ops::Range;

use half::bf16;

pub(crate) use pack::bf16_from_f32_bytes;
use pack::Lines;

mod pack;

/// Whether this CPU runs the kernel (AVX-512F, -BW and AVX512-BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// How operands are packed, which decides the kernel that multiplies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// For the `vdpbf16ps` register tile ([`kernel`]).
    Dot,
    /// For AMX tiles ([`amx`]).
    Tiles,
}

impl Layout {
    /// k-pairs per panel line for a `k` this long: zeros past `⌈k/2⌉` make
    /// whole tile blocks on AMX.
    fn padded_pairs(self, k: usize) -> usize {
        match self {
            Self::Dot => k.div_ceil(2),
            Self::Tiles => tile_pairs(k),
        }
    }

    /// AMX tiles where this process may use them, else `vdpbf16ps`.
    fn current() -> Self {
        #[cfg(target_arch = "x86_64")]
        if available() && amx::available() {
            return Self::Tiles;
        }
        Self::Dot
    }
}

/// How to pack an A for a kind of B: rows per panel and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct APanels {
    rows: usize,
    layout: Layout,
}

impl APanels {
    /// Rows of A per panel.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// [`APanels`] for a B from [`PackedB::from_rows_wide`].
pub fn wide_a_panels() -> APanels {
    match Layout::current() {
        Layout::Dot => APanels {
            rows: 12,
            layout: Layout::Dot,
        },
        Layout::Tiles => APanels {
            rows: TILE_PANEL,
            layout: Layout::Tiles,
        },
    }
}

#[cfg(target_arch = "x86_64")]
const TILE_PANEL: usize = amx::PANEL;
#[cfg(not(target_arch = "x86_64"))]
const TILE_PANEL: usize = 32;
#[cfg(target_arch = "x86_64")]
const TILE_BLOCK_PAIRS: usize = amx::BLOCK_PAIRS;
#[cfg(not(target_arch = "x86_64"))]
const TILE_BLOCK_PAIRS: usize = 16;

/// Columns per panel of a wide B ([`PackedB::from_rows_wide`]).
const WIDE_COLUMNS: usize = 32;

/// k-pairs per chunk: one 32-column B panel chunk is 32 KiB.
const CHUNK_PAIRS: usize = 256;

/// A row-major matrix (row stride given separately) of either element type.
#[derive(Clone, Copy)]
pub enum Matrix<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Matrix<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::Bf16(x) => x.len(),
        }
    }

    /// Elements `range` of it.
    pub fn part(self, range: std::ops::Range<usize>) -> Matrix<'a> {
        match self {
            Self::F32(x) => Self::F32(&x[range]),
            Self::Bf16(x) => Self::Bf16(&x[range]),
        }
    }
}

/// The left operand, `m × k`, in panels of `tile_rows` rows.
pub struct PackedA {
    data: Vec<u32>,
    rows: usize,
    pairs: usize,
    tile_rows: usize,
    layout: Layout,
}

impl PackedA {
    /// Packs the `m × k` matrix whose row `i` starts at `i · ld`, as
    /// `panels` (from the B it will multiply) says.
    pub fn new(src: Matrix, m: usize, k: usize, ld: usize, panels: APanels) -> Self {
        let order = match panels.layout {
            Layout::Dot => Order::PairMajor,
            Layout::Tiles => Order::Blocks,
        };
        let shape = pack::Shape {
            lines: m,
            k,
            ld,
            width: panels.rows,
            padded_pairs: panels.layout.padded_pairs(k),
        };
        Self {
            data: pack::pack(src, shape, Lines::AcrossRows, order),
            rows: m,
            pairs: k.div_ceil(2),
            tile_rows: panels.rows,
            layout: panels.layout,
        }
    }

    /// Number of row panels.
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(self.tile_rows)
    }
}

/// k-pairs of an operand on AMX tiles: whole blocks.
fn tile_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(TILE_BLOCK_PAIRS) * TILE_BLOCK_PAIRS
}

/// The order of a panel's pairs ([`pack`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Order {
    /// `[pair][line]`: the `vdpbf16ps` operands and B on tiles.
    PairMajor,
    /// `[block of 16 pairs][line][pair]`: A on tiles.
    Blocks,
}

/// The right operand, `k × n`, in panels of 16 or 32 columns.
pub struct PackedB {
    data: Vec<u32>,
    cols: usize,
    pairs: usize,
    vectors: usize,
    layout: Layout,
}

impl PackedB {
    /// Panel width in vectors: 1 where 16-column panels waste less padding.
    fn vectors_for(n: usize) -> usize {
        if !n.is_multiple_of(32) && n % 32 <= 16 {
            1
        } else {
            2
        }
    }

    /// `B = srcᵀ`, `src` being `n × k` with row stride `ld` (a linear
    /// layer's `(out, in)` weight, attention's keys).
    pub fn from_transposed(src: Matrix, n: usize, k: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, Self::vectors_for(n), Lines::AcrossRows)
    }

    /// `B = src`, `src` being `k × n` with row stride `ld` (attention's values).
    pub fn from_rows(src: Matrix, k: usize, n: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, Self::vectors_for(n), Lines::AlongRows)
    }

    /// [`Self::from_rows`] in 32-column panels whatever `n`, so that one
    /// [`PackedA`] packed for [`wide_a_panels`] serves every band of a
    /// convolution (wide matrices: the padding is a small part).
    pub fn from_rows_wide(src: Matrix, k: usize, n: usize, ld: usize) -> Self {
        Self::pack(src, n, k, ld, 2, Lines::AlongRows)
    }

    /// A `k × n` B in 32-column panels (as [`Self::from_rows_wide`]) that
    /// its producer fills with [`Self::write_rows`], all zero until then:
    /// Winograd's transformed input is written here as it is computed,
    /// without an f32 copy to pack afterwards.
    pub fn wide_unwritten(k: usize, n: usize) -> Self {
        let layout = Layout::current();
        Self {
            data: vec![0; n.div_ceil(WIDE_COLUMNS) * layout.padded_pairs(k) * WIDE_COLUMNS],
            cols: n,
            pairs: k.div_ceil(2),
            vectors: 2,
            layout,
        }
    }

    /// Makes `self` a [`Self::wide_unwritten`] `k × n` B, keeping its memory
    /// when it is one of that shape already: then its words still hold the
    /// last matrix written, and its padding zeros, until the producer writes
    /// every pair and column again (as Winograd's bands of equal size do).
    /// Fresh zeroed memory, faulted in page by page, was 15% of a
    /// full-resolution bf16 VAE decode when each band took new matrices.
    pub fn rewrite_wide(&mut self, k: usize, n: usize) {
        let same = self.vectors == 2
            && self.layout == Layout::current()
            && self.pairs == k.div_ceil(2)
            && self.cols == n;
        if !same {
            *self = Self::wide_unwritten(k, n);
        }
    }

    /// Writes rows `2·pair` (`lo`) and `2·pair + 1` (`hi`; zeros when
    /// absent) of columns `col..col + lo.len()` of a [`Self::wide_unwritten`]
    /// B, rounded to nearest even as packing rounds.
    ///
    /// # Panics
    /// On a pair or columns outside the matrix, or `hi` of another length
    /// (the caller's shapes are wrong).
    #[inline(always)]
    pub fn write_rows(&mut self, pair: usize, col: usize, lo: &[f32], hi: Option<&[f32]>) {
        assert!(
            self.vectors == 2
                && pair < self.pairs
                && col + lo.len() <= self.cols
                && hi.is_none_or(|hi| hi.len() == lo.len()),
            "write_rows: outside the packed matrix"
        );
        let panel_len = self.layout.padded_pairs(2 * self.pairs) * WIDE_COLUMNS;
        let simd = available();
        let mut done = 0;
        while done < lo.len() {
            let at = col + done;
            let within = at % WIDE_COLUMNS;
            let run = (WIDE_COLUMNS - within).min(lo.len() - done);
            let start = (at / WIDE_COLUMNS) * panel_len + pair * WIDE_COLUMNS + within;
            pack::f32_interleave(
                &lo[done..done + run],
                hi.map(|hi| &hi[done..done + run]),
                &mut self.data[start..start + run],
                simd,
            );
            done += run;
        }
    }

    /// The packed words, for tests that compare two ways of packing.
    #[cfg(test)]
    pub(crate) fn words(&self) -> &[u32] {
        &self.data
    }

    fn pack(src: Matrix, n: usize, k: usize, ld: usize, vectors: usize, lines: Lines) -> Self {
        match Layout::current() {
            Layout::Dot => Self::with_layout(src, n, k, ld, vectors, lines, Layout::Dot),
            Layout::Tiles => Self::with_layout(src, n, k, ld, 2, lines, Layout::Tiles),
        }
    }

    fn with_layout(
        src: Matrix,
        n: usize,
        k: usize,
        ld: usize,
        vectors: usize,
        lines: Lines,
        layout: Layout,
    ) -> Self {
        let shape = pack::Shape {
            lines: n,
            k,
            ld,
            width: 16 * vectors,
            padded_pairs: layout.padded_pairs(k),
        };
        Self {
            data: pack::pack(src, shape, lines, Order::PairMajor),
            cols: n,
            pairs: k.div_ceil(2),
            vectors,
            layout,
        }
    }

    /// How to pack the A this B multiplies: rows of A per register tile
    /// (24 or 12 accumulators' rows: 24 of the 32 vector registers hold
    /// sums), or 32 rows (two tiles) on AMX.
    pub fn a_panels(&self) -> APanels {
        let rows = match self.layout {
            Layout::Dot => 24 / self.vectors,
            Layout::Tiles => TILE_PANEL,
        };
        APanels {
            rows,
            layout: self.layout,
        }
    }

    /// Number of column panels.
    pub fn panels(&self) -> usize {
        self.cols.div_ceil(16 * self.vectors)
    }
}

/// One product as both kernels take it: C at `c`, rows `ldc` apart.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Job<'a> {
    a: &'a PackedA,
    b: &'a PackedB,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
}

/// `C[rows, cols] = alpha · A·B (+ C when accumulate)` for the row panels
/// `row_panels` of `a` and column panels `col_panels` of `b`; `c` points at
/// `C[0][0]`, rows `ldc` apart.
///
/// # Safety
/// [`available`] must be true; `c` must be valid for writes at every
/// `C[i][j]` in the given panels' rows and columns (clipped to `m × n`), and
/// no other thread may touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn multiply(
    a: &PackedA,
    b: &PackedB,
    row_panels: Range<usize>,
    col_panels: Range<usize>,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    let panels = b.a_panels();
    assert!(
        a.pairs == b.pairs && a.tile_rows == panels.rows && a.layout == panels.layout,
        "packed operands do not match"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller; Layout::Tiles exists only where
    // `amx::available()` (Layout::current).
    unsafe {
        let job = Job {
            a,
            b,
            c,
            ldc,
            alpha,
        };
        if b.layout == Layout::Tiles {
            amx::run::<amx::Hardware>(&job, row_panels, col_panels, accumulate);
            return;
        }
        match b.vectors {
            1 => kernel::run::<24, 1>(&job, row_panels, col_panels, accumulate),
            _ => kernel::run::<12, 2>(&job, row_panels, col_panels, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row_panels, col_panels, c, ldc, alpha, accumulate);
        unreachable!("bf16_gemm::available() is false off x86_64");
    }
}

/// Row panels and column panels per parallel task: a task's A rows (8
/// panels) stay in L2 while its B panels pass through L1.
const TASK_ROW_PANELS: usize = 8;
const TASK_COL_PANELS: usize = 8;

/// `C = alpha · A·B (+ C when accumulate)` over the whole of both operands,
/// split into tasks on rayon's pool. `c` holds `m` rows `ldc` apart.
pub fn multiply_parallel(
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) -> candle_core::Result<()> {
    if !available() {
        candle_core::bail!("bf16 matrix product: this CPU has no AVX512-BF16");
    }
    if a.rows == 0 || b.cols == 0 {
        return Ok(());
    }
    if ldc < b.cols || c.len() < (a.rows - 1) * ldc + b.cols {
        candle_core::bail!("bf16 matrix product: output too small");
    }
    // SAFETY: the kernel is available and `c` holds every row and column
    // of the product (both checked above).
    unsafe { multiply_on_pool(a, b, c.as_mut_ptr(), ldc, alpha, accumulate) };
    Ok(())
}

/// [`multiply`] over the whole of both operands, split into tasks on
/// rayon's pool.
///
/// # Safety
/// As for [`multiply`], for every row and column of the product.
pub unsafe fn multiply_on_pool(
    a: &PackedA,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let row_tasks = a.panels().div_ceil(TASK_ROW_PANELS);
    let col_tasks = b.panels().div_ceil(TASK_COL_PANELS);
    let dst = crate::cpu_kernel::SharedOut(c);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let (r, q) = (task / col_tasks, task % col_tasks);
        let rows = r * TASK_ROW_PANELS..((r + 1) * TASK_ROW_PANELS).min(a.panels());
        let cols = q * TASK_COL_PANELS..((q + 1) * TASK_COL_PANELS).min(b.panels());
        // SAFETY: forwarded from the caller; tasks write disjoint row ×
        // column blocks.
        unsafe { multiply(a, b, rows, cols, dst.at(0), ldc, alpha, accumulate) };
    });
}

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod kernel;

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn round(x: &[f32]) -> Vec<f64> {
        x.iter().map(|v| bf16::from_f32(*v).to_f64()).collect()
    }

    /// Shapes with edge tiles in both directions, odd `k`, several `k`
    /// chunks (and tile blocks), both panel widths.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 1, 1),
        (13, 40, 7),
        (30, 64, 600),
        (25, 80, 33),
        (50, 33, 1100),
        (70, 65, 64),
    ];

    /// Runs `product(a, b, c, ldc, alpha, accumulate)` for every shape,
    /// both source types and both B layouts, on C filled with 1, scaled
    /// (alpha 0.5) and not (1), accumulating and not, and checks C against
    /// the f64 product of the bf16-rounded operands up to f32 summation
    /// error.
    fn check_against_reference(
        product: impl Fn(&PackedA, &PackedB, &mut [f32], usize, f32, bool),
        pack_b: impl Fn(Matrix, usize, usize, usize, bool) -> PackedB,
    ) {
        for &(m, n, k) in &SHAPES {
            let lda = k + 3;
            let a = lcg(1, m * lda);
            let bt = lcg(2, n * k); // n × k
            let b_rows: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            let (ar, br) = (round(&a), round(&bt));
            let a16: Vec<bf16> = a.iter().map(|v| bf16::from_f32(*v)).collect();
            for (which, packed_b) in [
                pack_b(Matrix::F32(&bt), n, k, k, false),
                pack_b(Matrix::F32(&b_rows), k, n, n, true),
            ]
            .into_iter()
            .enumerate()
            {
                let sources = [Matrix::F32(&a), Matrix::Bf16(&a16)];
                let ways = [(0.5, true), (1.0, true), (0.5, false), (1.0, false)];
                for (src, (alpha, accumulate)) in sources.iter().flat_map(|s| ways.map(|w| (s, w)))
                {
                    let packed_a = PackedA::new(*src, m, k, lda, packed_b.a_panels());
                    let ldc = n + 5;
                    let mut c = vec![1.0f32; m * ldc];
                    product(&packed_a, &packed_b, &mut c, ldc, alpha, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let exact: f64 =
                                (0..k).map(|kk| ar[i * lda + kk] * br[j * k + kk]).sum();
                            let want = f64::from(accumulate) + alpha as f64 * exact;
                            let got = c[i * ldc + j] as f64;
                            let bound = 1e-6 * (k as f64) + 1e-6;
                            assert!(
                                (got - want).abs() <= bound,
                                "{m}x{n}x{k} layout {which} alpha {alpha} accumulate {accumulate} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        // The padding between rows is untouched.
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| *v == 1.0));
                    }
                }
            }
        }
    }

    /// The kernel this CPU uses (AMX tiles where present, else
    /// `vdpbf16ps`) against the reference.
    #[test]
    fn product_equals_f64_reference_of_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        eprintln!("layout: {:?}", Layout::current());
        check_against_reference(
            |a, b, c, ldc, alpha, accumulate| {
                // SAFETY: c holds m rows of ldc ≥ n columns; one thread.
                unsafe {
                    let c = c.as_mut_ptr();
                    multiply(
                        a,
                        b,
                        0..a.panels(),
                        0..b.panels(),
                        c,
                        ldc,
                        alpha,
                        accumulate,
                    );
                }
            },
            |src, rows, cols, ld, given_as_rows| match given_as_rows {
                true => PackedB::from_rows(src, rows, cols, ld),
                false => PackedB::from_transposed(src, rows, cols, ld),
            },
        );
    }

    /// The AMX tile walk, packing and edges, with the tile arithmetic
    /// emulated: tested on every CPU, AMX or not.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tile_walk_equals_f64_reference_of_rounded_operands() {
        check_against_reference(
            |a, b, c, ldc, alpha, accumulate| {
                let job = Job {
                    a,
                    b,
                    c: c.as_mut_ptr(),
                    ldc,
                    alpha,
                };
                let (rows, cols) = (0..a.panels(), 0..b.panels());
                // SAFETY: as above; the emulated unit needs no AMX.
                unsafe { amx::run::<amx::Emulated>(&job, rows, cols, accumulate) };
            },
            |src, rows, cols, ld, given_as_rows| {
                // (n, k) for transposed sources, (k, n) for rows.
                let (n, k, lines) = match given_as_rows {
                    true => (cols, rows, Lines::AlongRows),
                    false => (rows, cols, Lines::AcrossRows),
                };
                PackedB::with_layout(src, n, k, ld, 2, lines, Layout::Tiles)
            },
        );
    }
}
