//! What a generation costs in memory, from the model's own configs.
//!
//! The estimate follows how the forward pass allocates rather than a curve
//! fitted to one model: candle's CPU ops are out of place, so every op's
//! output is a new buffer, and a Rust binding that is shadowed stays alive to
//! the end of its scope. The peak of each block is the sum of the buffers live
//! at its worst moment; the peak of a generation is the worst block plus what
//! is held across blocks (the UNet's skip connections). Counted in elements of
//! the runtime dtype, turned into bytes at the end.
//!
//! Blocks, as the engine writes them (`layers.rs`, `unet_blocks.rs`,
//! `transformer.rs`, `attention.rs`, `vae.rs`, candle-core's tiled conv):
//!
//! * GroupNorm (+ SiLU) of `c` channels over `n` cells: one fused pass, one
//!   output buffer of `c·n` (on the CPU in f32; other dtypes take candle's
//!   out-of-place ops, which this model undercounts).
//! * 3×3 conv (`conv/` on the CPU): the output, and Winograd's transformed
//!   kernels where the layer takes that path (up to 150 MiB for SD's
//!   1280-channel convolutions at 512 px), counted once per pass as the
//!   largest of its convolutions (`ModelShape::winograd_bytes`). The
//!   im2col or Winograd band each thread fills is at most 8 MiB.
//! * ResnetBlock2D (`cin` → `cout`, shortcut conv when they differ): see
//!   [`resnet_peak`].
//! * Transformer block of `c` channels: the residual and hidden state, then the
//!   worse of self-attention (norm, q/k/v, their per-head copies, the scores,
//!   output) and the GEGLU feed-forward (norm, 8c projection, 4c gelu, 4c
//!   product, output).
//! * Attention scores: see [`Attention`].

use crate::config::{PerBlock, UNetConfig, VaeConfig};

/// Tokens of the text context (CLIP's 77), for cross-attention scores.
const CONTEXT_TOKENS: usize = 77;

/// How an attention layer holds its scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// The whole `queries × keys` matrix and its softmax (candle's blocks).
    Full,
    /// Runs of heads or query rows whose scores fit `score_bytes` (the
    /// engine's `attention.rs`): a block's scores and their softmax, never
    /// more than the whole matrix.
    Blocked {
        /// `ScoreBlock`'s bytes.
        score_bytes: u64,
    },
    /// A few query rows per thread, scores kept in cache (the engine's
    /// `attention_cpu.rs`): each of `threads` tasks holds `score_bytes`.
    RowsPerThread {
        /// `attention_cpu::SCORE_BYTES`.
        score_bytes: u64,
        /// Threads running tasks at once.
        threads: usize,
    },
    /// Query blocks × key blocks with a running max and sum (flash-style):
    /// scores exist one tile at a time.
    Chunked {
        /// Queries per block.
        q_block: usize,
        /// Keys per block.
        k_block: usize,
    },
}

impl Attention {
    /// Elements (of `dtype_bytes` each) of score scratch for `bh` (batch ×
    /// heads) attentions of `nq` queries over `nk` keys.
    pub fn scratch(self, bh: usize, nq: usize, nk: usize, dtype_bytes: usize) -> u128 {
        let bh = bh as u128;
        match self {
            // scores and their softmax
            Attention::Full => 2 * bh * nq as u128 * nk as u128,
            Attention::Blocked { score_bytes } => {
                let whole = 2 * bh * nq as u128 * nk as u128;
                // A block holds score_bytes / 4 scores, f32 where they are
                // upcast (SD 2.x, the VAE): counted as f32 whatever the dtype.
                whole.min(2 * u128::from(score_bytes) / 4) * 4 / dtype_bytes.max(1) as u128
            }
            Attention::RowsPerThread {
                score_bytes,
                threads,
            } => {
                let whole = bh * nq as u128 * nk as u128;
                whole.min(threads as u128 * u128::from(score_bytes) / 4)
            }
            // a tile of scores, its exponentials, and the running max/sum per query
            Attention::Chunked { q_block, k_block } => {
                let (q, k) = (q_block.min(nq) as u128, k_block.min(nk) as u128);
                bh * (2 * q * k + 2 * nq as u128)
            }
        }
    }
}

/// Bounds of a GPU's score block (`attention::ScoreBlock`, counted as f32).
const GPU_SCORE_BYTES: std::ops::RangeInclusive<u64> = (64 << 20)..=(2 << 30);

/// A GPU's score block for a memory budget: 1/32 of it within
/// [`GPU_SCORE_BYTES`]. The products of a block run as one batched matrix
/// product, and one head's probabilities times its values (`n × keys` by
/// `keys × head_dim`) fill few of a GPU's multiprocessors: the GPU is only busy
/// when a block holds many heads or many rows. On an H200, 64 MiB blocks ran
/// SD 1.5 at 1024x1024 at 1.3 it/s; see bench/README.md for the larger ones.
/// The block's scores and softmax, 1/16 of the budget at most in f32, are
/// counted by the plan like any activation.
pub fn gpu_score_bytes(budget: u64) -> u64 {
    (budget / 32).clamp(*GPU_SCORE_BYTES.start(), *GPU_SCORE_BYTES.end())
}

/// The attention the engine runs on `device` within `budget` bytes: on the
/// CPU a block of query rows per thread (`attention_cpu.rs`), on a GPU blocks
/// of [`gpu_score_bytes`].
pub fn engine_attention(device: &candle_core::Device, budget: u64) -> Attention {
    if device.is_cpu() {
        Attention::RowsPerThread {
            score_bytes: crate::attention_cpu::SCORE_BYTES as u64,
            threads: candle_core::utils::get_num_threads().max(1),
        }
    } else {
        Attention::Blocked {
            score_bytes: gpu_score_bytes(budget),
        }
    }
}

/// The shapes that decide activation memory, read from the UNet and VAE configs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// UNet `block_out_channels`.
    pub unet_channels: Vec<usize>,
    /// Whether each UNet level has transformer blocks (cross-attention).
    pub unet_cross_attn: Vec<bool>,
    /// Attention heads at each UNet level.
    pub unet_heads: Vec<usize>,
    /// UNet resnets per down block (up blocks have one more).
    pub unet_layers: usize,
    /// Latent channels (UNet input).
    pub latent_channels: usize,
    /// VAE `block_out_channels`.
    pub vae_channels: Vec<usize>,
    /// VAE resnets per encoder block (decoder blocks have one more).
    pub vae_layers: usize,
    /// Pixels per latent cell.
    pub vae_factor: usize,
    /// Bytes per element at the runtime dtype.
    pub dtype_bytes: usize,
    /// Bytes per element in the VAE (f32 when it is upcast from f16).
    pub vae_dtype_bytes: usize,
    /// Side of a VAE tile in pixels (the VAE config's `sample_size`, as diffusers).
    pub vae_tile: usize,
    /// How attention holds its scores.
    pub attention: Attention,
    /// `--fast-decode`: the tiny VAE's widest decoder stage (it decodes the
    /// final images instead of the VAE, whole); `None` without it.
    pub fast_decode_channels: Option<usize>,
    /// Whether the convolutions run on the CPU (`conv/`), whose Winograd
    /// kernels a pass holds beside its activations.
    pub cpu_convs: bool,
}

impl ModelShape {
    /// The shape of a model from its configs (already checked by `model.rs`).
    pub fn from_configs(
        unet: &UNetConfig,
        vae: &VaeConfig,
        dtype_bytes: usize,
        vae_dtype_bytes: usize,
        attention: Attention,
    ) -> Self {
        let n = unet.block_out_channels.len();
        let heads = unet
            .num_attention_heads
            .as_ref()
            .or(unet.attention_head_dim.as_ref())
            .unwrap_or(&PerBlock::One(8))
            .expand(n)
            .unwrap_or_else(|| vec![8; n]);
        let layers = unet
            .layers_per_block
            .expand(n)
            .and_then(|l| l.first().copied())
            .unwrap_or(2);
        Self {
            unet_channels: unet.block_out_channels.clone(),
            unet_cross_attn: unet
                .down_block_types
                .iter()
                .map(|t| t.starts_with("CrossAttn"))
                .collect(),
            unet_heads: heads,
            unet_layers: layers,
            latent_channels: unet.in_channels,
            vae_channels: vae.block_out_channels.clone(),
            vae_layers: vae.layers_per_block,
            vae_factor: 1 << vae.block_out_channels.len().saturating_sub(1),
            dtype_bytes,
            vae_dtype_bytes,
            vae_tile: vae.sample_size(),
            attention,
            fast_decode_channels: None,
            cpu_convs: false,
        }
    }

    /// Peak activation bytes of the tiny VAE decoding one image of `w × h`
    /// pixels whole (`--fast-decode`), `None` without one: at full size a
    /// stage holds its input (the upsampled copy, or a block's input kept
    /// for the skip), a block's intermediate, a convolution's output and the
    /// skip's sum: four buffers of its width.
    pub fn tiny_decode_peak(&self, width: usize, height: usize) -> Option<u128> {
        let channels = self.fast_decode_channels? as u128;
        let pixels = (width as u128) * (height as u128);
        Some(4 * channels * pixels * self.vae_dtype_bytes as u128)
    }

    /// Peak activation bytes of one UNet call on `batch` latents of `w × h` pixels.
    pub fn unet_peak(&self, width: usize, height: usize, batch: usize) -> u128 {
        let (lw, lh) = (width / self.vae_factor, height / self.vae_factor);
        let levels = self.unet_channels.len();
        // cells at level i (the batch included)
        let cells = |i: usize| (batch * (lw >> i).max(1) * (lh >> i).max(1)) as u128;
        let ch = |i: usize| self.unet_channels[i] as u128;
        let l = self.unet_layers as u128;
        // Skip connections held from the down path: conv_in's output, each
        // resnet's (and transformer's) output, each downsample's output.
        let mut skips = ch(0) * cells(0);
        for i in 0..levels {
            skips += l * ch(i) * cells(i);
            if i + 1 < levels {
                skips += ch(i) * cells(i + 1);
            }
        }
        let mut worst = 0u128;
        for i in 0..levels {
            // The up block's first resnet sees the level below concatenated with a skip.
            let below = if i + 1 < levels { ch(i + 1) } else { ch(i) };
            let res =
                resnet_peak(below + ch(i), ch(i), true).max(resnet_peak(2 * ch(i), ch(i), true));
            let mut local = res * cells(i);
            if self.unet_cross_attn.get(i).copied().unwrap_or(false) {
                let n = (lw >> i).max(1) * (lh >> i).max(1);
                let bh = batch * self.unet_heads.get(i).copied().unwrap_or(8);
                let c = ch(i) * cells(i);
                let self_attn = 8 * c + self.attention.scratch(bh, n, n, self.dtype_bytes);
                let cross_attn = 4 * c
                    + self
                        .attention
                        .scratch(bh, n, CONTEXT_TOKENS, self.dtype_bytes);
                let feed_forward = 18 * c;
                local = local.max(2 * c + self_attn.max(cross_attn).max(feed_forward));
            }
            worst = worst.max(local);
        }
        // The middle block (resnet, transformer, resnet) at the lowest level.
        let bottom = levels - 1;
        let mid_c = ch(bottom) * cells(bottom);
        let n = (lw >> bottom).max(1) * (lh >> bottom).max(1);
        let bh = batch * self.unet_heads.get(bottom).copied().unwrap_or(8);
        let mid = (2 * mid_c
            + (8 * mid_c + self.attention.scratch(bh, n, n, self.dtype_bytes)).max(18 * mid_c))
        .max(resnet_peak(ch(bottom), ch(bottom), true) * cells(bottom));
        // Winograd's kernels: each level's resnet convolutions (the up
        // blocks' first sees the level below concatenated, the last the
        // level above) and the upsampler into it.
        let size = |i: usize| ((lw >> i).max(1), (lh >> i).max(1));
        let convs = (0..levels).flat_map(|i| {
            let below = if i + 1 < levels { ch(i + 1) } else { ch(i) };
            let above = if i > 0 { ch(i - 1) } else { ch(i) };
            let (w, h) = size(i);
            [below + ch(i), 2 * ch(i), above + ch(i)]
                .map(|cin| (cin, ch(i), w, h))
                .into_iter()
                .chain((i + 1 < levels).then_some((below, below, w, h)))
        });
        let workspace = self.winograd_bytes(convs);
        (skips + worst.max(mid)) * self.dtype_bytes as u128 + workspace
    }

    /// The largest Winograd kernels of `convs` (`c_in`, `c_out`, output
    /// width and height) on the CPU; 0 on a GPU. A convolution's precision
    /// follows its weights (bf16 products for bf16 weights where the CPU has
    /// them, `layers.rs`), which the activations' dtype does not tell, so
    /// both precisions the CPU can run are counted and the larger kept.
    fn winograd_bytes(&self, convs: impl IntoIterator<Item = (u128, u128, usize, usize)>) -> u128 {
        use crate::conv::{workspace_bytes, Precision};
        if !self.cpu_convs {
            return 0;
        }
        let bf16 = crate::bf16_gemm::available();
        let bytes = |(cin, cout, w, h): (u128, u128, usize, usize)| {
            let (Ok(cin), Ok(cout)) = (usize::try_from(cin), usize::try_from(cout)) else {
                return 0;
            };
            let f32 = workspace_bytes(cin, cout, w, h, Precision::F32);
            let bf16 = if bf16 {
                workspace_bytes(cin, cout, w, h, Precision::Bf16)
            } else {
                0
            };
            u128::from(f32.max(bf16))
        };
        convs.into_iter().map(bytes).max().unwrap_or(0)
    }

    /// Peak activation bytes of decoding one image of `w × h` pixels whole.
    pub fn vae_decode_peak(&self, width: usize, height: usize) -> u128 {
        let (lw, lh) = (width / self.vae_factor, height / self.vae_factor);
        let rev: Vec<u128> = self.vae_channels.iter().rev().map(|c| *c as u128).collect();
        let levels = rev.len();
        let cells = |j: usize| ((lw << j) * (lh << j)) as u128;
        // Mid block at the latent size: resnet, single-head attention, resnet.
        let n0 = lw * lh;
        let mid = (resnet_peak(rev[0], rev[0], false) * cells(0))
            .max(6 * rev[0] * cells(0) + self.attention.scratch(1, n0, n0, self.vae_dtype_bytes));
        let mut worst = mid;
        for j in 0..levels {
            let cin = if j == 0 { rev[0] } else { rev[j - 1] };
            let first = resnet_peak(cin, rev[j], false);
            let rest = resnet_peak(rev[j], rev[j], false);
            worst = worst.max(first.max(rest) * cells(j));
            if j + 1 < levels {
                // nearest upsample (input, upsampled), then the conv's output
                worst = worst.max(rev[j] * (cells(j) + 2 * cells(j + 1)));
            }
        }
        // conv_norm_out + silu (one buffer) and conv_out's RGB output at full size.
        let last = rev[levels - 1] * cells(levels - 1);
        worst = worst.max(2 * last + 3 * cells(levels - 1));
        // Winograd's kernels: each level's resnets, and its upsampler's
        // convolution at the next level's size.
        let size = |j: usize| (lw << j, lh << j);
        let convs = (0..levels).flat_map(|j| {
            let cin = if j == 0 { rev[0] } else { rev[j - 1] };
            let (w, h) = size(j);
            let (uw, uh) = size(j + 1);
            [(cin, rev[j], w, h), (rev[j], rev[j], w, h)]
                .into_iter()
                .chain((j + 1 < levels).then_some((rev[j], rev[j], uw, uh)))
        });
        let workspace = self.winograd_bytes(convs);
        worst * self.vae_dtype_bytes as u128 + workspace
    }

    /// Peak activation bytes of decoding in tiles of `tile` pixels square:
    /// one tile's decode plus the full image's output and its blend.
    pub fn vae_tiled_peak(&self, width: usize, height: usize, tile: usize) -> u128 {
        let tile_peak = self.vae_decode_peak(tile.min(width), tile.min(height));
        tile_peak + 3 * 3 * (width * height) as u128 * self.vae_dtype_bytes as u128
    }

    /// Peak activation bytes of encoding one `w × h` image whole (image to
    /// image): the encoder's levels top down, then its middle block.
    pub fn vae_encode_peak(&self, width: usize, height: usize) -> u128 {
        let ch: Vec<u128> = self.vae_channels.iter().map(|c| *c as u128).collect();
        let levels = ch.len();
        let cells = |j: usize| ((width >> j).max(1) * (height >> j).max(1)) as u128;
        // conv_in: the pixels and the first level's output.
        let mut worst = 3 * cells(0) + ch[0] * cells(0);
        for j in 0..levels {
            let cin = if j == 0 { ch[0] } else { ch[j - 1] };
            let first = resnet_peak(cin, ch[j], false);
            let rest = resnet_peak(ch[j], ch[j], false);
            worst = worst.max(first.max(rest) * cells(j));
            if j + 1 < levels {
                // stride-2 conv: input and two padded copies (right, then
                // bottom), then input, padded copy and the half-size output
                worst = worst.max(ch[j] * 3 * cells(j));
            }
        }
        let deep = levels - 1;
        let n = (width >> deep).max(1) * (height >> deep).max(1);
        let mid = (resnet_peak(ch[deep], ch[deep], false) * cells(deep)).max(
            6 * ch[deep] * cells(deep) + self.attention.scratch(1, n, n, self.vae_dtype_bytes),
        );
        // Winograd's kernels: each level's resnets.
        let convs = (0..levels).flat_map(|j| {
            let cin = if j == 0 { ch[0] } else { ch[j - 1] };
            let (w, h) = ((width >> j).max(1), (height >> j).max(1));
            [(cin, ch[j], w, h), (ch[j], ch[j], w, h)]
        });
        let workspace = self.winograd_bytes(convs);
        // The input pixels stay alive throughout.
        (worst.max(mid) + 3 * cells(0)) * self.vae_dtype_bytes as u128 + workspace
    }

    /// Peak activation bytes of encoding in tiles of `tile` pixels square:
    /// one tile's encode plus the whole image and the blended moments.
    pub fn vae_tiled_encode_peak(&self, width: usize, height: usize, tile: usize) -> u128 {
        let tile_peak = self.vae_encode_peak(tile.min(width), tile.min(height));
        let moments = 2 * self.latent_channels as u128 * (width * height) as u128
            / (self.vae_factor * self.vae_factor).max(1) as u128;
        tile_peak + (3 * (width * height) as u128 + 3 * moments) * self.vae_dtype_bytes as u128
    }
}

/// Peak elements per cell of a ResnetBlock2D from `cin` to `cout` channels
/// (`layers.rs`: GroupNorm and SiLU fused into one buffer). Worst of conv1
/// (input, norm1 output, the conv's output) and conv2 (input, conv1's output
/// and its time-embedding sum, both alive to the end of the block, norm2
/// output, the conv's output), plus the shortcut conv's output.
fn resnet_peak(cin: u128, cout: u128, temb: bool) -> u128 {
    let shortcut = if cin != cout { cout } else { 0 };
    let conv1 = 2 * cin + cout;
    let conv2 = cin + (3 + u128::from(temb)) * cout;
    conv1.max(conv2) + shortcut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stable Diffusion 1.5's shapes.
    fn sd15() -> ModelShape {
        ModelShape {
            unet_channels: vec![320, 640, 1280, 1280],
            unet_cross_attn: vec![true, true, true, false],
            unet_heads: vec![8; 4],
            unet_layers: 2,
            latent_channels: 4,
            vae_channels: vec![128, 256, 512, 512],
            vae_layers: 2,
            vae_factor: 8,
            dtype_bytes: 4,
            vae_dtype_bytes: 4,
            vae_tile: 512,
            attention: Attention::Full,
            fast_decode_channels: None,
            cpu_convs: false,
        }
    }

    #[test]
    fn resnet_peaks_follow_the_live_buffers() {
        // same channels: conv2's phase (input + 3 or 4 outputs)
        assert_eq!(resnet_peak(32, 32, false), 4 * 32);
        assert_eq!(resnet_peak(32, 32, true), 5 * 32);
        // 256 -> 128 with a shortcut: conv1's phase (2 * 256 + 128) + shortcut
        assert_eq!(resnet_peak(256, 128, false), 2 * 256 + 128 + 128);
    }

    #[test]
    fn sd15_vae_decode_at_512_is_its_first_full_size_resnet() {
        // decoder levels 512, 512, 256, 128 channels; the 256 -> 128 resnet at
        // 512x512 holds 2*256 + 128 + 128 (shortcut) = 768 floats per pixel.
        assert_eq!(sd15().vae_decode_peak(512, 512), 768 * 512 * 512 * 4);
    }

    #[test]
    fn a_64_channel_tiny_decoder_costs_a_third_of_the_sd_vae_decode() {
        assert_eq!(sd15().tiny_decode_peak(512, 512), None);
        let fast = ModelShape {
            fast_decode_channels: Some(64),
            ..sd15()
        };
        let tiny = fast.tiny_decode_peak(512, 512).expect("a tiny decoder");
        assert_eq!(tiny, 4 * 64 * 512 * 512 * 4);
        assert!(3 * tiny == fast.vae_decode_peak(512, 512));
    }

    #[test]
    fn gpu_score_blocks_take_a_32nd_of_the_budget_within_bounds() {
        const GIB: u64 = 1 << 30;
        assert_eq!(gpu_score_bytes(16 * GIB), 512 << 20);
        assert_eq!(gpu_score_bytes(GIB), 64 << 20);
        assert_eq!(gpu_score_bytes(0), 64 << 20);
        assert_eq!(gpu_score_bytes(140 * GIB), 2 * GIB);
        assert_eq!(gpu_score_bytes(u64::MAX), 2 * GIB);
        let cpu = engine_attention(&candle_core::Device::Cpu, 16 * GIB);
        assert!(matches!(cpu, Attention::RowsPerThread { .. }), "{cpu:?}");
    }

    #[test]
    fn full_attention_is_quadratic_and_chunked_is_not() {
        let full = sd15();
        let chunked = ModelShape {
            attention: Attention::Chunked {
                q_block: 1024,
                k_block: 1024,
            },
            ..sd15()
        };
        let ratio =
            |m: &ModelShape| m.unet_peak(1024, 1024, 2) as f64 / m.unet_peak(512, 512, 2) as f64;
        assert!(ratio(&full) > 10.0, "{}", ratio(&full));
        assert!(ratio(&chunked) < 4.5, "{}", ratio(&chunked));
        // full attention at 512, batch 2 (CFG): 2 * 8 heads * 4096^2 scores and softmax
        assert!(full.unet_peak(512, 512, 2) > 2 * 16 * 4096 * 4096 * 4);
        // the CPU's rows per thread: a fixed block per thread, never more than the whole matrix
        let rows = Attention::RowsPerThread {
            score_bytes: 512 << 10,
            threads: 2,
        };
        assert_eq!(rows.scratch(16, 4096, 4096, 4), 2 * (512 << 10) / 4);
        assert_eq!(rows.scratch(1, 10, 77, 4), 770);
        // the GPU's blocks: as f32 scores and softmax whatever the dtype
        // (upcast scores are f32), never more than the whole matrix
        let blocked = Attention::Blocked {
            score_bytes: 64 << 20,
        };
        assert_eq!(blocked.scratch(16, 4096, 4096, 2) * 2, 2 * (64 << 20));
        assert_eq!(blocked.scratch(16, 4096, 4096, 4) * 4, 2 * (64 << 20));
        assert_eq!(blocked.scratch(2, 10, 77, 2) * 2, 2 * 2 * 770 * 4);
        // tiling bounds the decode by the tile
        assert!(chunked.vae_tiled_peak(2048, 2048, 512) < chunked.vae_decode_peak(2048, 2048) / 4);
        assert!(
            chunked.vae_tiled_encode_peak(2048, 2048, 512)
                < chunked.vae_encode_peak(2048, 2048) / 4
        );
    }

    #[test]
    fn sd15_vae_encode_at_512_is_its_full_size_resnets_and_below_the_decode() {
        // encoder levels 128, 256, 512, 512: the full-size level's resnets
        // hold 128 + 3 * 128 = 512 floats per pixel, its stride-2 conv's
        // padding 3 * 128 = 384; the 128 -> 256 resnet at half size
        // (128 + 3 * 256 + 256) / 4 = 288; plus the 3 input channels.
        let m = sd15();
        assert_eq!(m.vae_encode_peak(512, 512), (512 + 3) * 512 * 512 * 4);
        assert!(m.vae_encode_peak(1024, 768) < m.vae_decode_peak(1024, 768));
    }

    /// On the CPU a pass also holds its largest Winograd kernels: at 512 px
    /// SD 1.5's upsampler into the 32x32 level (1280 channels: 16 f32
    /// matrices, and 16 packed bf16 copies where the CPU has bf16 products),
    /// at 256 px the one into the 32x32 level 0 (640); the 16x16 levels keep
    /// im2col. The VAE's 512-channel convolutions take f32 F(4x4, 3x3), 36
    /// f32 matrices, more than bf16's F(2x2) with its packed copies.
    /// Whatever the activations' dtype. A GPU holds none.
    #[test]
    fn winograd_kernels_count_on_the_cpu_only() {
        let per_value = if crate::bf16_gemm::available() { 6 } else { 4 };
        for dtype_bytes in [2, 4] {
            let gpu = ModelShape {
                dtype_bytes,
                vae_dtype_bytes: dtype_bytes,
                ..sd15()
            };
            let cpu = ModelShape {
                cpu_convs: true,
                ..gpu.clone()
            };
            let extra = |w: usize| cpu.unet_peak(w, w, 2) - gpu.unet_peak(w, w, 2);
            // Rows counted in whole panels of 6 (`conv::transformed_bytes`).
            assert_eq!(extra(512), 16 * per_value * 1284 * 1280);
            assert_eq!(extra(256), 16 * per_value * 642 * 640);
            let decode = cpu.vae_decode_peak(512, 512) - gpu.vae_decode_peak(512, 512);
            assert_eq!(decode, 36 * 4 * 516 * 512, "the VAE's 512-channel convs");
            let encode = cpu.vae_encode_peak(512, 512) - gpu.vae_encode_peak(512, 512);
            assert_eq!(encode, 36 * 4 * 516 * 512, "the encoder's 64x64 level");
        }
    }

    #[test]
    fn costs_grow_with_the_batch() {
        let m = sd15();
        assert!(m.unet_peak(512, 512, 4) > m.unet_peak(512, 512, 2));
    }
}
