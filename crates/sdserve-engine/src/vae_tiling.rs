//! Tiled VAE encoding and decoding, equal to diffusers' `AutoencoderKL` after
//! `enable_tiling()` (0.42: `_encode`, `_tiled_encode`, `_decode`,
//! `tiled_decode`, `blend_v`, `blend_h`).
//!
//! The input is cut into overlapping square tiles, each run on its own (the
//! encoder + quant_conv, or post_quant_conv + decoder), and each result's top
//! and left edges are cross-faded into the already blended results above and
//! to its left. Peak activation memory is then that of one tile whatever the
//! image size; the output differs a little from an untiled run, exactly as
//! diffusers' does.

use crate::vae::VaeDecoder;
use crate::vae_encoder::{LatentDistribution, VaeEncoder};
use candle_core::{Tensor, D};

use crate::error::{EngineError, Result};

/// diffusers' `tile_overlap_factor`, fixed in `AutoencoderKL.__init__`.
const OVERLAP_FACTOR: f64 = 0.25;

/// Tile sizes, derived from the VAE config as diffusers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGeometry {
    /// `tile_sample_min_size`: a tile in pixels, the config's `sample_size`.
    pub sample: usize,
    /// `tile_latent_min_size`: `int(sample_size / 2**(len(block_out_channels) - 1))`.
    pub latent: usize,
}

impl TileGeometry {
    /// The geometry of a VAE with `sample_size` and `num_blocks` entries in
    /// `block_out_channels`. Refused where diffusers' loop would fail (a zero
    /// tile stride raises in Python's `range`).
    pub fn new(sample_size: usize, num_blocks: usize) -> Result<Self> {
        let factor = 2f64.powi(num_blocks.saturating_sub(1).min(62) as i32);
        let geometry = Self {
            sample: sample_size,
            latent: (sample_size as f64 / factor) as usize,
        };
        if geometry.latent_stride() == 0 || geometry.row_limit() == 0 {
            return Err(EngineError::Unsupported(format!(
                "VAE tiling needs a larger VAE sample_size than {sample_size} for {num_blocks} blocks (a tile would be {} latent cells)",
                geometry.latent
            )));
        }
        Ok(geometry)
    }

    /// Latent cells from one tile's start to the next (`overlap_size`).
    pub fn latent_stride(&self) -> usize {
        (self.latent as f64 * (1.0 - OVERLAP_FACTOR)) as usize
    }

    /// Pixel rows or columns cross-faded between neighbours (`blend_extent`).
    pub fn blend_extent(&self) -> usize {
        (self.sample as f64 * OVERLAP_FACTOR) as usize
    }

    /// Pixels kept from each blended tile (`row_limit`).
    pub fn row_limit(&self) -> usize {
        self.sample - self.blend_extent()
    }

    /// diffusers' `_decode` condition: tile only a latent larger than one tile.
    pub fn needs_tiling(&self, latent_height: usize, latent_width: usize) -> bool {
        latent_height > self.latent || latent_width > self.latent
    }

    /// diffusers' `_encode` condition: tile only an image larger than one tile.
    pub fn needs_encode_tiling(&self, height: usize, width: usize) -> bool {
        height > self.sample || width > self.sample
    }

    /// How `tiled_decode` cuts a latent: latent tiles, pixel blends.
    fn decoding(&self) -> Cuts {
        Cuts {
            tile: self.latent,
            stride: self.latent_stride(),
            blend: self.blend_extent(),
            keep: self.row_limit(),
        }
    }

    /// How `_tiled_encode` cuts an image: pixel tiles
    /// (`overlap_size = int(sample * 0.75)`), latent blends
    /// (`blend_extent = int(latent * 0.25)`, `row_limit = latent - blend_extent`).
    fn encoding(&self) -> Cuts {
        let blend = (self.latent as f64 * OVERLAP_FACTOR) as usize;
        Cuts {
            tile: self.sample,
            stride: ((self.sample as f64 * (1.0 - OVERLAP_FACTOR)) as usize).max(1),
            blend,
            keep: self.latent - blend,
        }
    }
}

/// Tiles of `tile` input cells every `stride` cells; each output tile's
/// first `blend` rows and columns are cross-faded, its first `keep` kept.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    tile: usize,
    stride: usize,
    blend: usize,
    keep: usize,
}

/// `vae.decode(z).sample` with tiling enabled: the plain decode when `z`
/// fits in one tile, else [`tiled_decode`].
pub fn decode(vae: &VaeDecoder, geometry: &TileGeometry, z: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = z.dims4()?;
    if geometry.needs_tiling(h, w) {
        tiled_decode(vae, geometry, z)
    } else {
        Ok(vae.decode(z)?)
    }
}

/// diffusers' `tiled_decode`.
pub fn tiled_decode(vae: &VaeDecoder, geometry: &TileGeometry, z: &Tensor) -> Result<Tensor> {
    tiled(z, geometry.decoding(), |tile| Ok(vae.decode(tile)?))
}

/// `vae.encode(x).latent_dist` with tiling enabled: the encoder's moments
/// from [`tiled`] tiles when `x` is larger than one tile, else whole.
pub fn encode(
    vae: &VaeEncoder,
    geometry: &TileGeometry,
    pixels: &Tensor,
) -> Result<LatentDistribution> {
    let (_, _, h, w) = pixels.dims4()?;
    let moments = if geometry.needs_encode_tiling(h, w) {
        tiled(pixels, geometry.encoding(), |tile| Ok(vae.moments(tile)?))?
    } else {
        vae.moments(pixels)?
    };
    Ok(LatentDistribution::from_moments(&moments)?)
}

/// The loop `_tiled_encode` and `tiled_decode` share: tiles row by row, each
/// blended into its (already blended) neighbours above and to the left, then
/// cropped to `keep` and concatenated. Only the previous row of results is
/// kept (diffusers keeps all of them; the blends read the same values).
fn tiled(input: &Tensor, cuts: Cuts, run: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (_, _, h, w) = input.dims4()?;
    let mut above: Vec<Tensor> = Vec::new();
    let mut rows = Vec::new();
    for i in (0..h).step_by(cuts.stride) {
        let rows_here = cuts.tile.min(h - i);
        let mut row: Vec<Tensor> = Vec::new();
        for (col, j) in (0..w).step_by(cuts.stride).enumerate() {
            let cols_here = cuts.tile.min(w - j);
            let mut tile = run(&input.narrow(2, i, rows_here)?.narrow(3, j, cols_here)?)?;
            if let Some(up) = above.get(col) {
                tile = blend_edge(up, &tile, cuts.blend, 2)?;
            }
            if let Some(left) = row.last() {
                tile = blend_edge(left, &tile, cuts.blend, 3)?;
            }
            row.push(tile);
        }
        let cropped = row
            .iter()
            .map(|t| crop(t, cuts.keep))
            .collect::<Result<Vec<_>>>()?;
        rows.push(Tensor::cat(&cropped, 3)?);
        above = row;
    }
    Ok(Tensor::cat(&rows, 2)?)
}

/// `blend_v` (`dim` 2) or `blend_h` (`dim` 3): the first `extent` rows or
/// columns of `b` become `a_end[k] * (1 - k/extent) + b[k] * (k/extent)`,
/// where `a_end` are the last `extent` of `a`; extent is capped by both sizes.
fn blend_edge(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (a_len, b_len) = (a.dim(dim)?, b.dim(dim)?);
    let extent = extent.min(a_len).min(b_len);
    if extent == 0 {
        return Ok(b.clone());
    }
    // Python computes each weight as a double; torch multiplies in float32.
    let ramp: Vec<f64> = (0..extent).map(|k| k as f64 / extent as f64).collect();
    let mut shape = vec![1usize; 4];
    shape[dim] = extent;
    let weights = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let values: Vec<f32> = ramp.iter().map(|r| f(*r) as f32).collect();
        Ok(Tensor::from_vec(values, shape.as_slice(), b.device())?.to_dtype(b.dtype())?)
    };
    let keep_a = weights(&|r| 1.0 - r)?;
    let take_b = weights(&|r| r)?;
    let a_end = a.narrow(dim, a_len - extent, extent)?;
    let b_start = b.narrow(dim, 0, extent)?;
    let blended = (a_end.broadcast_mul(&keep_a)? + b_start.broadcast_mul(&take_b)?)?;
    if extent == b_len {
        return Ok(blended);
    }
    Ok(Tensor::cat(
        &[&blended, &b.narrow(dim, extent, b_len - extent)?],
        dim,
    )?)
}

/// `tile[:, :, :limit, :limit]`.
fn crop(tile: &Tensor, limit: usize) -> Result<Tensor> {
    let h = tile.dim(D::Minus2)?.min(limit);
    let w = tile.dim(D::Minus1)?.min(limit);
    Ok(tile.narrow(2, 0, h)?.narrow(3, 0, w)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn geometry_follows_diffusers_formulas() {
        // SD 1.5's VAE: sample_size 512, 4 blocks.
        let sd15 = TileGeometry::new(512, 4).unwrap();
        assert_eq!((sd15.latent, sd15.latent_stride()), (64, 48));
        assert_eq!((sd15.blend_extent(), sd15.row_limit()), (128, 384));
        // The fixtures' tiny VAE: sample_size 64, 4 blocks.
        let tiny = TileGeometry::new(64, 4).unwrap();
        assert_eq!((tiny.latent, tiny.latent_stride()), (8, 6));
        assert_eq!((tiny.blend_extent(), tiny.row_limit()), (16, 48));
        assert!(!tiny.needs_tiling(8, 8));
        assert!(tiny.needs_tiling(9, 8) && tiny.needs_tiling(8, 9));
        // int(100 / 8) = 12, int(12 * 0.75) = 9, int(100 * 0.25) = 25.
        let odd = TileGeometry::new(100, 4).unwrap();
        assert_eq!(
            (odd.latent, odd.latent_stride(), odd.blend_extent()),
            (12, 9, 25)
        );
        assert!(
            TileGeometry::new(8, 4).is_err(),
            "a one-cell tile has no stride"
        );
    }

    #[test]
    fn blend_edge_cross_fades_rows_and_columns_as_blend_v_and_blend_h() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((1, 1, 4, 6))
            .unwrap();
        let b = Tensor::ones((1, 1, 3, 5), candle_core::DType::F32, &dev).unwrap();
        // extent 4 is capped by b's 3 rows: rows get a[1..4] * (1, 2/3, 1/3) + b * (0, 1/3, 2/3).
        let b_wide = Tensor::ones((1, 1, 3, 6), candle_core::DType::F32, &dev).unwrap();
        let v = blend_edge(&a, &b_wide, 4, 2)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let w = |y: usize| y as f32 / 3.0;
        for (y, row) in v[0].iter().enumerate() {
            for (x, value) in row.iter().enumerate() {
                let expected = ((y + 1) * 6 + x) as f32 * (1.0 - w(y)) + w(y);
                assert!((value - expected).abs() < 1e-5, "v {y},{x}");
            }
        }
        // blend_h with extent 2: columns 0..2 of b from a's last two columns.
        let h = blend_edge(&a.narrow(2, 0, 3).unwrap(), &b, 2, 3)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (y, row) in h[0].iter().enumerate() {
            assert_eq!(row[0], (y * 6 + 4) as f32);
            assert_eq!(row[1], (y * 6 + 5) as f32 * 0.5 + 0.5);
            assert_eq!(&row[2..], &[1.0, 1.0, 1.0]);
        }
    }
}
