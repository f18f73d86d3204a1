//! The product on AMX tiles (`tdpbf16ps`), for Xeons since Sapphire Rapids.
//!
//! One `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one into 16 ×
//! 16 f32 sums: 16 times the work of a `vdpbf16ps`, and PyTorch's bf16
//! autocast runs on it through oneDNN. A block of C is 32 × 32 in four sum
//! tiles (`tmm0`–`tmm3`); each step loads two A tiles (`tmm4`, `tmm5`) and
//! two B tiles (`tmm6`, `tmm7`) and runs the four products.
//!
//! Layouts ([`super::Layout::Tiles`]): A in panels of 32 rows, each a run of
//! blocks of 16 k-pairs, `[block][row][pair]`, so that a tile is 1 KiB in one
//! piece; B in panels of 32 columns, `[pair][column]` (the VNNI layout
//! `vdpbf16ps` reads too). Both are padded with zeros to whole blocks.
//!
//! The tile instructions are written as assembly (Rust has no stable AMX
//! intrinsics) behind the [`Unit`] trait; an [`Emulated`] unit does the same
//! arithmetic in plain Rust, so the walk over panels and blocks is tested on
//! every CPU. Before first use the real unit multiplies a test product in a
//! forked child: a CPU, hypervisor or kernel that claims AMX but faults, or
//! computes something else, leaves the process on the `vdpbf16ps` kernel.

use std::arch::asm;
use std::ops::Range;

use super::{Job, PackedA, PackedB};

/// Rows of A (and columns of B) per panel: two tiles.
pub(super) const PANEL: usize = 32;
/// k-pairs per tile row.
pub(super) const BLOCK_PAIRS: usize = 16;

/// Whether this process multiplies on AMX tiles: the CPU says so, Linux
/// grants the tile state, the forked self-test agrees with the emulation,
/// and `SDSERVE_NO_AMX` is unset, empty or `0` (setting it is for
/// comparisons and an escape hatch).
pub(super) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let refused = matches!(std::env::var("SDSERVE_NO_AMX").as_deref(), Ok(v) if !v.is_empty() && v != "0");
        if refused || !cpu_has_amx_bf16() {
            return false;
        }
        if !request_tile_state() {
            tracing::info!("AMX: the kernel refused the tile state; using AVX512-BF16");
            return false;
        }
        let passed = self_test_in_child::<Hardware>();
        if passed {
            tracing::info!("AMX: bf16 products run on tiles");
        } else {
            tracing::warn!("AMX: the self-test failed; using AVX512-BF16");
        }
        passed
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
fn cpu_has_amx_bf16() -> bool {
    // Leaf 7 exists on every CPU with AVX-512, which `super::available`
    // (checked first) requires.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`), without
/// which the first tile load raises SIGILL. The grant is process-wide.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Runs `U` (the [`Hardware`]) in a forked child on a product with whole
/// blocks and edges in every direction, both ways C is written (scaled
/// through a buffer; accumulated straight in the tiles), and compares it
/// with [`Emulated`]; true only if the child exits cleanly with a match.
/// Everything the child touches is allocated before the fork, so it needs
/// no lock another thread might hold.
#[cfg(target_os = "linux")]
fn self_test_in_child<U: Unit>() -> bool {
    let (m, n, k) = (70, 65, 100);
    let a_src: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
        .collect();
    let b_src: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
        .collect();
    let (a, b) = tiles_operands(&a_src, &b_src, m, n, k);
    let start: Vec<f32> = (0..m * n).map(|i| (i % 11) as f32 - 5.0).collect();
    let mut want = [start.clone(), start.clone()];
    let mut got = [start.clone(), start];
    let ways = [(0.5, false), (1.0, true)];
    let jobs = |c: &mut [Vec<f32>; 2]| {
        let [first, second] = c;
        [(first, ways[0]), (second, ways[1])].map(|(c, (alpha, accumulate))| {
            let job = Job {
                a: &a,
                b: &b,
                c: c.as_mut_ptr(),
                ldc: n,
                alpha,
            };
            (job, accumulate)
        })
    };
    for (job, accumulate) in jobs(&mut want) {
        // SAFETY: the job's C holds the m × n product; one thread.
        unsafe { run::<Emulated>(&job, 0..a.panels(), 0..b.panels(), accumulate) };
    }
    let got_jobs = jobs(&mut got);
    // SAFETY: fork in a process that may have other threads: the child
    // runs only the kernel on memory allocated above, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, request_tile_state succeeded in the parent
        // (the grant is inherited); each job's C holds the product.
        unsafe {
            for (job, accumulate) in &got_jobs {
                run::<U>(job, 0..a.panels(), 0..b.panels(), *accumulate);
            }
            let matches = want
                .iter()
                .flatten()
                .zip(got.iter().flatten())
                .all(|(w, g)| (w - g).abs() <= 1e-4 * (1.0 + w.abs()));
            libc::_exit(if matches { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[cfg(not(target_os = "linux"))]
fn self_test_in_child<U: Unit>() -> bool {
    false
}

/// `a_src` (`m × k`) and `b_src` (`k × n`), both row-major, packed for tiles.
#[cfg(target_os = "linux")]
fn tiles_operands(
    a_src: &[f32],
    b_src: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> (PackedA, PackedB) {
    let panels = super::APanels {
        rows: PANEL,
        layout: super::Layout::Tiles,
    };
    let a = PackedA::new(super::Matrix::F32(a_src), m, k, k, panels);
    let b = PackedB::with_layout(
        super::Matrix::F32(b_src),
        n,
        k,
        n,
        2,
        super::Lines::AlongRows,
        super::Layout::Tiles,
    );
    (a, b)
}

/// The tile operations the walk needs; [`Hardware`] and [`Emulated`] do
/// the same arithmetic.
pub(super) trait Unit: Default {
    /// Configures 8 tiles of 16 rows × 64 bytes.
    unsafe fn begin(&mut self);
    /// Sets the four sum tiles to 0.
    unsafe fn zero_sums(&mut self);
    /// Sums += A block × B block: `a` is a 32-row block (two tiles of 16
    /// rows, 64 bytes apart row to row), `b` a 16-pair block of a 32-column
    /// panel (two tiles side by side, 128 bytes apart row to row).
    unsafe fn step(&mut self, a: *const u32, b: *const u32);
    /// Sets the sums to the 32 × 32 f32 block at `c` (rows `ldc` apart).
    unsafe fn load_sums(&mut self, c: *const f32, ldc: usize);
    /// The 32 × 32 sums into the block at `c` (rows `ldc` apart).
    unsafe fn store_sums(&mut self, c: *mut f32, ldc: usize);
    /// Releases the tile state.
    unsafe fn end(&mut self);
}

/// `C[panels] = alpha · A·B (+ C when accumulate)`, block by block of C.
/// Whole blocks with `alpha` 1 (every product but attention's scores) go
/// straight between C and the sum tiles; the others through a buffer.
///
/// # Safety
/// As for [`super::multiply`], the operands in [`super::Layout::Tiles`];
/// for [`Hardware`], [`available`] must be true.
pub(super) unsafe fn run<U: Unit>(
    job: &Job,
    row_panels: Range<usize>,
    col_panels: Range<usize>,
    accumulate: bool,
) {
    let (a, b) = (job.a, job.b);
    let blocks = a.pairs.div_ceil(BLOCK_PAIRS);
    let padded = blocks * BLOCK_PAIRS;
    let mut unit = U::default();
    let mut sums = [[0f32; PANEL]; PANEL];
    unit.begin();
    for j in col_panels {
        let b_panel = b.data.as_ptr().add(j * padded * PANEL);
        let cols = PANEL.min(b.cols - j * PANEL);
        for i in row_panels.clone() {
            let a_panel = a.data.as_ptr().add(i * padded * PANEL);
            let rows = PANEL.min(a.rows - i * PANEL);
            let c = job.c.add(i * PANEL * job.ldc + j * PANEL);
            let direct = job.alpha == 1.0 && rows == PANEL && cols == PANEL;
            if direct && accumulate {
                unit.load_sums(c, job.ldc);
            } else {
                unit.zero_sums();
            }
            for block in 0..blocks {
                let step = block * BLOCK_PAIRS * PANEL;
                unit.step(a_panel.add(step), b_panel.add(step));
            }
            if direct {
                unit.store_sums(c, job.ldc);
                continue;
            }
            unit.store_sums(sums.as_mut_ptr() as *mut f32, PANEL);
            for (r, row) in sums.iter().enumerate().take(rows) {
                let dst = std::slice::from_raw_parts_mut(c.add(r * job.ldc), cols);
                for (d, s) in dst.iter_mut().zip(row) {
                    *d = if accumulate {
                        *d + job.alpha * s
                    } else {
                        job.alpha * s
                    };
                }
            }
        }
    }
    unit.end();
}

/// The CPU's tiles.
#[derive(Default)]
pub(super) struct Hardware;

/// Palette 1, tiles 0–7 each 16 rows of 64 bytes.
const fn tile_config() -> [u8; 64] {
    let mut config = [0u8; 64];
    config[0] = 1;
    let mut t = 0;
    while t < 8 {
        config[16 + 2 * t] = 64;
        config[48 + t] = 16;
        t += 1;
    }
    config
}

static TILE_CONFIG: [u8; 64] = tile_config();

impl Unit for Hardware {
    unsafe fn begin(&mut self) {
        asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.as_ptr(), options(nostack, readonly));
    }

    unsafe fn zero_sums(&mut self) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    unsafe fn step(&mut self, a: *const u32, b: *const u32) {
        asm!(
            "tileloadd tmm4, [{a} + {a_stride}]",
            "tileloadd tmm6, [{b} + {b_stride}]",
            "tileloadd tmm7, [{b_right} + {b_stride}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a_lower} + {a_stride}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = in(reg) a,
            a_lower = in(reg) a.add(16 * BLOCK_PAIRS),
            a_stride = in(reg) 4 * BLOCK_PAIRS,
            b = in(reg) b,
            b_right = in(reg) b.add(16),
            b_stride = in(reg) 4 * PANEL,
            options(nostack, readonly)
        );
    }

    unsafe fn load_sums(&mut self, c: *const f32, ldc: usize) {
        asm!(
            "tileloadd tmm0, [{top_left} + {stride}]",
            "tileloadd tmm1, [{top_right} + {stride}]",
            "tileloadd tmm2, [{bottom_left} + {stride}]",
            "tileloadd tmm3, [{bottom_right} + {stride}]",
            top_left = in(reg) c,
            top_right = in(reg) c.add(16),
            bottom_left = in(reg) c.add(16 * ldc),
            bottom_right = in(reg) c.add(16 * ldc + 16),
            stride = in(reg) 4 * ldc,
            options(nostack, readonly)
        );
    }

    unsafe fn store_sums(&mut self, c: *mut f32, ldc: usize) {
        asm!(
            "tilestored [{top_left} + {stride}], tmm0",
            "tilestored [{top_right} + {stride}], tmm1",
            "tilestored [{bottom_left} + {stride}], tmm2",
            "tilestored [{bottom_right} + {stride}], tmm3",
            top_left = in(reg) c,
            top_right = in(reg) c.add(16),
            bottom_left = in(reg) c.add(16 * ldc),
            bottom_right = in(reg) c.add(16 * ldc + 16),
            stride = in(reg) 4 * ldc,
            options(nostack)
        );
    }

    unsafe fn end(&mut self) {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The tile arithmetic in plain Rust, as the SDM's pseudocode for
/// `tdpbf16ps` gives it: per pair, the even products then the odd ones,
/// each added with one rounding.
#[derive(Default)]
pub(super) struct Emulated {
    sums: [[[f32; 16]; 16]; 4],
}

fn halves(pair: u32) -> (f32, f32) {
    (
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xffff_0000),
    )
}

impl Unit for Emulated {
    unsafe fn begin(&mut self) {}

    unsafe fn zero_sums(&mut self) {
        self.sums = [[[0.0; 16]; 16]; 4];
    }

    unsafe fn step(&mut self, a: *const u32, b: *const u32) {
        for (t, sums) in self.sums.iter_mut().enumerate() {
            let a_tile = a.add((t / 2) * 16 * BLOCK_PAIRS);
            let b_tile = b.add((t % 2) * 16);
            for (m, row) in sums.iter_mut().enumerate() {
                for p in 0..BLOCK_PAIRS {
                    let (a0, a1) = halves(*a_tile.add(m * BLOCK_PAIRS + p));
                    for (n, sum) in row.iter_mut().enumerate() {
                        let (b0, b1) = halves(*b_tile.add(p * PANEL + n));
                        *sum += a0 * b0;
                        *sum += a1 * b1;
                    }
                }
            }
        }
    }

    unsafe fn load_sums(&mut self, c: *const f32, ldc: usize) {
        for (t, sums) in self.sums.iter_mut().enumerate() {
            let corner = c.add((t / 2) * 16 * ldc + (t % 2) * 16);
            for (m, row) in sums.iter_mut().enumerate() {
                row.copy_from_slice(std::slice::from_raw_parts(corner.add(m * ldc), 16));
            }
        }
    }

    unsafe fn store_sums(&mut self, c: *mut f32, ldc: usize) {
        for (t, sums) in self.sums.iter().enumerate() {
            let corner = c.add((t / 2) * 16 * ldc + (t % 2) * 16);
            for (m, row) in sums.iter().enumerate() {
                std::slice::from_raw_parts_mut(corner.add(m * ldc), 16).copy_from_slice(row);
            }
        }
    }

    unsafe fn end(&mut self) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Emulated sums with one element off by one.
    #[derive(Default)]
    struct OffByOne(Emulated);

    impl Unit for OffByOne {
        unsafe fn begin(&mut self) {}
        unsafe fn zero_sums(&mut self) {
            self.0.zero_sums();
        }
        unsafe fn step(&mut self, a: *const u32, b: *const u32) {
            self.0.step(a, b);
        }
        unsafe fn load_sums(&mut self, c: *const f32, ldc: usize) {
            self.0.load_sums(c, ldc);
        }
        unsafe fn store_sums(&mut self, c: *mut f32, ldc: usize) {
            self.0.store_sums(c, ldc);
            *c.add(3 * ldc + 5) += 1.0;
        }
        unsafe fn end(&mut self) {}
    }

    /// A unit that dies as an unsupported instruction would.
    #[derive(Default)]
    struct Crashes;

    impl Unit for Crashes {
        unsafe fn begin(&mut self) {
            std::process::abort();
        }
        unsafe fn zero_sums(&mut self) {}
        unsafe fn step(&mut self, _: *const u32, _: *const u32) {}
        unsafe fn load_sums(&mut self, _: *const f32, _: usize) {}
        unsafe fn store_sums(&mut self, _: *mut f32, _: usize) {}
        unsafe fn end(&mut self) {}
    }

    /// The forked self-test accepts a unit that computes the product and
    /// refuses one that computes something else or dies.
    #[test]
    fn self_test_tells_a_working_unit_from_a_broken_one() {
        assert!(self_test_in_child::<Emulated>());
        assert!(!self_test_in_child::<OffByOne>());
        assert!(!self_test_in_child::<Crashes>());
    }
}
