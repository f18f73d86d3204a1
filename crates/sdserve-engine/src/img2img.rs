//! Where a job's denoising starts: pure noise (text-to-image), an encoded
//! image with noise added at the step `strength` picks (diffusers'
//! `StableDiffusionImg2ImgPipeline`), or an image and a mask
//! (`StableDiffusionInpaintPipeline`, for inpainting UNets that take the mask
//! and the masked image's latents as extra input channels, and for regular
//! UNets, whose latents are blended with the re-noised image each step).
//!
//! The generator's draws keep diffusers' order, so a seed reproduces its
//! image: img2img encodes (one draw) then draws the noise; inpainting encodes
//! the image when it needs its latents, draws the noise, then encodes the
//! masked image (a draw of its own).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::hires::{interpolate_tensor, LatentMode};
use crate::image_input::DecodedImage;
use crate::image_ops::{resize, Filter, GrayImage, ResizeMode};
use crate::model::StableDiffusion;
use crate::request::{GenerateRequest, PasteBack};
use crate::rng::TorchRng;
use crate::samplers::Sampler;
use crate::vae_tiling::{self, TileGeometry};

/// A job's initial latents and what its steps need besides them.
pub struct Start {
    pub latents: Tensor,
    /// First schedule index that runs (0 for text-to-image): a UNet call
    /// index, the start step times the sampler's order.
    pub start_step: usize,
    pub inpaint: Option<Inpaint>,
}

/// Inpainting inputs, `batch_size` rows each.
pub struct Inpaint {
    /// Latent-size mask `(n, 1, h, w)`, 1 where the image is repainted.
    pub mask: Tensor,
    /// Inpainting UNets: the masked image's latents, concatenated to the input.
    pub masked_latents: Option<Tensor>,
    /// Regular UNets: the image's latents and the initial noise, re-noised to
    /// each step's level and kept where the mask is 0.
    pub blend: Option<(Tensor, Tensor)>,
}

impl Inpaint {
    /// The UNet input for an inpainting UNet: `[latents, mask, masked latents]` on channels.
    pub fn unet_input(&self, scaled: &Tensor) -> Result<Tensor> {
        match &self.masked_latents {
            Some(masked) => Ok(Tensor::cat(
                &[scaled, &self.mask.to_dtype(scaled.dtype())?, masked],
                1,
            )?),
            None => Ok(scaled.clone()),
        }
    }

    /// Regular UNets, after step `step`: keep the image (noised to the next
    /// step's level, or clean after the last step) where the mask is 0.
    pub fn blend(&self, sampler: &dyn Sampler, latents: &Tensor, step: usize) -> Result<Tensor> {
        let Some((image, noise)) = &self.blend else {
            return Ok(latents.clone());
        };
        let proper = if step + 1 < sampler.timesteps().len() {
            sampler.add_noise(image, noise, step + 1)?
        } else {
            image.clone()
        };
        let keep = self.mask.affine(-1.0, 1.0)?;
        Ok((proper.broadcast_mul(&keep)? + latents.broadcast_mul(&self.mask)?)?)
    }
}

/// diffusers' `get_timesteps`: the first step of a `strength` run of `steps`.
pub fn start_step(steps: usize, strength: f64) -> usize {
    let run = ((steps as f64 * strength) as usize).min(steps);
    steps - run
}

/// Checks what only the model can tell: an encoder for the image, a strength
/// that runs at least one step.
pub fn validate(model: &StableDiffusion, request: &GenerateRequest) -> Result<()> {
    let Some(init) = &request.init else {
        return Ok(());
    };
    if model.vae_encoder.is_none() {
        return Err(EngineError::Unsupported(
            "this model's VAE has no encoder weights, so it cannot start from an image".into(),
        ));
    }
    if !(init.strength > 0.0 && init.strength <= 1.0) {
        return Err(EngineError::InvalidRequest(format!(
            "strength {} must be in (0, 1]",
            init.strength
        )));
    }
    if start_step(request.steps, init.strength) >= request.steps {
        return Err(EngineError::InvalidRequest(format!(
            "strength {} runs no step of {} (steps x strength must be at least 1)",
            init.strength, request.steps
        )));
    }
    if init.resize_latents && init.mask.is_some() {
        return Err(EngineError::InvalidRequest(
            "resizing in latent space is for image to image; inpainting resizes the image".into(),
        ));
    }
    if let Some(paste) = &init.paste {
        let (x, y, w, h) = paste.region;
        let (cw, ch) = (paste.canvas.width, paste.canvas.height);
        if w == 0 || h == 0 || x.saturating_add(w) > cw || y.saturating_add(h) > ch {
            return Err(EngineError::InvalidRequest(format!(
                "the paste region {w}x{h} at ({x}, {y}) is not inside the {cw}x{ch} image"
            )));
        }
        if (paste.mask.width, paste.mask.height) != (cw, ch)
            || paste.mask.luma.len() != cw * ch
            || paste.canvas.rgb.len() != cw * ch * 3
        {
            return Err(EngineError::InvalidRequest(format!(
                "the paste-back mask is {}x{}, not the image's {cw}x{ch}",
                paste.mask.width, paste.mask.height
            )));
        }
        if init.overlay.is_some() || request.hires.is_some() {
            return Err(EngineError::InvalidRequest(
                "an only-masked inpainting job pastes its result back itself: no overlay or hires fix"
                    .into(),
            ));
        }
    }
    if let Some(overlay) = &init.overlay {
        if (overlay.width, overlay.height) != (request.width, request.height)
            || overlay.luma.len() != overlay.width * overlay.height
        {
            return Err(EngineError::InvalidRequest(format!(
                "the overlay mask is {}x{}, not the output's {}x{}",
                overlay.width, overlay.height, request.width, request.height
            )));
        }
    }
    for (what, w, h) in [("image", init.image.width, init.image.height)]
        .into_iter()
        .chain(init.mask.as_ref().map(|m| ("mask", m.width, m.height)))
    {
        if w == 0 || h == 0 {
            return Err(EngineError::InvalidRequest(format!("the {what} is empty")));
        }
    }
    Ok(())
}

/// Draws a job's starting latents (`batch_size` rows) from `rng` in diffusers' order.
/// `tiles`: encode in tiles (the job's VAE tiles, as with diffusers' `enable_tiling()`).
pub fn prepare(
    model: &StableDiffusion,
    sampler: &dyn Sampler,
    request: &GenerateRequest,
    tiles: Option<&TileGeometry>,
    rng: &mut TorchRng,
) -> Result<Start> {
    let n = request.batch_size;
    let (h, w) = (
        request.height / model.vae_scale_factor,
        request.width / model.vae_scale_factor,
    );
    let shape = (n, model.latent_channels, h, w);
    let device = &model.device;
    let draw_noise = |rng: &mut TorchRng| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            rng.randn(n * model.latent_channels * h * w),
            shape,
            device,
        )?)
    };
    let init = request.init.as_ref();
    // An inpainting UNet without a mask repaints everything (A1111 does the same).
    let inpainting = model.inpainting || init.is_some_and(|i| i.mask.is_some());
    if !inpainting {
        return match init {
            None => Ok(Start {
                latents: (draw_noise(rng)? * sampler.init_noise_sigma())?,
                start_step: 0,
                inpaint: None,
            }),
            Some(init) => {
                let image = if init.resize_latents {
                    // A1111's resize_mode 3: encode as is, then resize the latents.
                    let own = (init.image.width, init.image.height);
                    let pixels = pixel_tensor(&init.image.rgb, own, device)?;
                    let latents = encode(model, &pixels, tiles, rng)?;
                    interpolate_tensor(&latents, (h, w), LatentMode::Bilinear)?
                } else {
                    encode(
                        model,
                        &image_tensor(&init.image, request, device)?,
                        tiles,
                        rng,
                    )?
                };
                let image = image.repeat((n, 1, 1, 1))?;
                let start = start_step(request.steps, init.strength) * sampler.order();
                let noise = draw_noise(rng)?;
                Ok(Start {
                    latents: sampler.add_noise(&image, &noise, start)?,
                    start_step: start,
                    inpaint: None,
                })
            }
        };
    }

    let strength = init.map_or(1.0, |i| i.strength);
    let strength_max = strength == 1.0;
    let start = start_step(request.steps, strength) * sampler.order();
    let pixels = match init {
        Some(init) => image_tensor(&init.image, request, device)?,
        None => Tensor::zeros((1, 3, request.height, request.width), DType::F32, device)?,
    };
    let pixel_mask = match init.and_then(|i| i.mask.as_deref()) {
        Some(mask) => mask_tensor(mask, request, device)?,
        None => Tensor::ones((1, 1, request.height, request.width), DType::F32, device)?,
    };
    let image_latents = if !model.inpainting || !strength_max {
        Some(encode(model, &pixels, tiles, rng)?.repeat((n, 1, 1, 1))?)
    } else {
        None
    };
    let noise = draw_noise(rng)?;
    let latents = match (&image_latents, strength_max) {
        (Some(image), false) => sampler.add_noise(image, &noise, start)?,
        _ => (&noise * sampler.init_noise_sigma())?,
    };
    // masked_image = image * (mask < 0.5); the mask is already 0 or 1.
    let masked = pixels.broadcast_mul(&pixel_mask.affine(-1.0, 1.0)?)?;
    let masked_latents = encode(model, &masked, tiles, rng)?.repeat((n, 1, 1, 1))?;
    let mask = nearest_downsample(&pixel_mask, h, w)?.repeat((n, 1, 1, 1))?;
    // A regular UNet always has the image latents (encoded above).
    let inpaint = match (model.inpainting, image_latents) {
        (false, Some(image)) => Inpaint {
            mask,
            masked_latents: None,
            blend: Some((image, noise)),
        },
        _ => Inpaint {
            mask,
            masked_latents: Some(masked_latents),
            blend: None,
        },
    };
    Ok(Start {
        latents,
        start_step: start,
        inpaint: Some(inpaint),
    })
}

/// A1111's overlay for a job: its init image resized as the pipeline
/// resized it, and the overlay mask; `None` without an overlay. Made once per
/// job and applied to each of its decoded images with [`Overlay::apply`].
pub struct Overlay<'a> {
    original: Vec<u8>,
    mask: &'a GrayImage,
}

impl<'a> Overlay<'a> {
    pub fn for_request(request: &'a GenerateRequest) -> Option<Self> {
        let init = request.init.as_ref()?;
        let mask = init.overlay.as_deref()?;
        let original = resize(
            &init.image.rgb,
            (init.image.width, init.image.height),
            3,
            (request.width, request.height),
            Filter::Lanczos,
        );
        Some(Self { original, mask })
    }

    /// Puts the original back over `rgb` outside the mask.
    pub fn apply(&self, rgb: &mut [u8]) {
        crate::image_ops::overlay(rgb, &self.original, &self.mask.luma);
    }
}

/// A1111's `uncrop` + `apply_overlay` for "only masked" inpainting: `rgb`
/// (`width × height`) resized into the paste region (crop and resize) on a
/// copy of the canvas, then the canvas put back over it with alpha
/// `255 - mask`. Returns the canvas-sized result.
pub fn paste_back(paste: &PasteBack, rgb: &[u8], (width, height): (usize, usize)) -> Vec<u8> {
    let canvas = &paste.canvas;
    let (x, y, w, h) = paste.region;
    let fitted = crate::image_ops::fit(rgb, (width, height), 3, (w, h), ResizeMode::CropAndResize);
    let mut out = canvas.rgb.clone();
    for row in 0..h {
        let from = row * w * 3;
        let to = ((y + row) * canvas.width + x) * 3;
        out[to..to + w * 3].copy_from_slice(&fitted[from..from + w * 3]);
    }
    crate::image_ops::overlay(&mut out, &canvas.rgb, &paste.mask.luma);
    out
}

/// The init image at the request's size (Lanczos), in [-1, 1], `(1, 3, h, w)` f32.
fn image_tensor(
    image: &DecodedImage,
    request: &GenerateRequest,
    device: &Device,
) -> Result<Tensor> {
    let rgb = resize(
        &image.rgb,
        (image.width, image.height),
        3,
        (request.width, request.height),
        Filter::Lanczos,
    );
    pixel_tensor(&rgb, (request.width, request.height), device)
}

/// 8-bit RGB of `(width, height)` in [-1, 1], `(1, 3, h, w)` f32.
fn pixel_tensor(rgb: &[u8], (width, height): (usize, usize), device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = rgb.iter().map(|v| *v as f32 / 255.0 * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(values, (height, width, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// The mask at the request's size (Lanczos on the 8-bit gray image), binarised
/// at 0.5 as diffusers' mask processor: `(1, 1, h, w)` of 0 and 1.
fn mask_tensor(mask: &GrayImage, request: &GenerateRequest, device: &Device) -> Result<Tensor> {
    let luma = resize(
        &mask.luma,
        (mask.width, mask.height),
        1,
        (request.width, request.height),
        Filter::Lanczos,
    );
    let values: Vec<f32> = luma
        .iter()
        .map(|v| if (*v as f32 / 255.0) < 0.5 { 0.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(
        values,
        (1, 1, request.height, request.width),
        device,
    )?)
}

/// `torch.nn.functional.interpolate(mask, size=(h, w))` (mode "nearest").
fn nearest_downsample(mask: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, mh, mw) = mask.dims4()?;
    let rows: Vec<u32> = (0..h).map(|i| ((i * mh) / h) as u32).collect();
    let cols: Vec<u32> = (0..w).map(|j| ((j * mw) / w) as u32).collect();
    let device = mask.device();
    let rows = Tensor::from_vec(rows, h, device)?;
    let cols = Tensor::from_vec(cols, w, device)?;
    Ok(mask
        .index_select(&rows, 2)?
        .index_select(&cols, 3)?
        .contiguous()?)
}

/// `vae.encode(pixels).latent_dist.sample(generator)` in the VAE's dtype,
/// then scaled into the UNet's latent space (SDXL-style VAEs with latent
/// statistics: `(z - mean) * scaling_factor / std`), f32.
/// `tiles` encodes as diffusers does after `vae.enable_tiling()`.
pub(crate) fn encode(
    model: &StableDiffusion,
    pixels: &Tensor,
    tiles: Option<&TileGeometry>,
    rng: &mut TorchRng,
) -> Result<Tensor> {
    let encoder = model.vae_encoder.as_ref().ok_or_else(|| {
        EngineError::Unsupported("this model's VAE has no encoder weights".into())
    })?;
    let pixels = pixels.to_dtype(model.vae_dtype)?;
    let distribution = match tiles {
        Some(geometry) => vae_tiling::encode(encoder, geometry, &pixels)?,
        None => encoder.encode(&pixels)?,
    };
    let latents = distribution.sample(rng)?.to_dtype(DType::F32)?;
    Ok(match &model.vae_latents_stats {
        Some((mean, std)) => latents
            .broadcast_sub(mean)?
            .affine(model.vae_scaling_factor, 0.0)?
            .broadcast_div(std)?,
        None => ((latents - model.vae_shift_factor)? * model.vae_scaling_factor)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::attention::ScoreBlock;
    use crate::image_ops::{resize, Filter};
    use crate::test_util::max_diff;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// `reference/img2img-debug.safetensors` (fixtures/make_img2img_fixtures.py).
    fn debug() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(
            fixtures().join("reference/img2img-debug.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    }

    fn bytes(t: &Tensor) -> Vec<u8> {
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    }

    /// The VAE encoder's moments and a seeded sample equal diffusers'
    /// `vae.encode(x).latent_dist` and `.sample(generator)`.
    #[test]
    fn vae_encoder_matches_diffusers_latent_dist() {
        let debug = debug();
        for model in ["tiny-sd1", "tiny-sdxl"] {
            let dir = fixtures().join("models").join(model);
            let sd =
                StableDiffusion::load_with(&dir, &Device::Cpu, ScoreBlock::DEFAULT, DType::F32)
                    .unwrap();
            let get = |name: &str| debug[&format!("{model}.vae_encode.{name}")].clone();
            let encoder = sd
                .vae_encoder
                .as_ref()
                .expect("the fixture VAE has an encoder");
            let dist = encoder.encode(&get("image")).unwrap();
            let mean = max_diff(&dist.mean, &get("mean"));
            let logvar = get("logvar").affine(0.5, 0.0).unwrap().exp().unwrap();
            let std = max_diff(&dist.std, &logvar);
            let sample = max_diff(
                &dist.sample(&mut TorchRng::new(5)).unwrap(),
                &get("sample_seed5"),
            );
            assert!(
                mean < 1e-4 && std < 1e-4 && sample < 1e-4,
                "{model}: {mean} {std} {sample}"
            );
        }
    }

    /// Pillow's Lanczos (up and down), bilinear and nearest, byte for byte.
    #[test]
    fn resizing_equals_pillow() {
        let debug = debug();
        let get = |name: &str| bytes(&debug[&format!("resize.{name}")]);
        let small = get("src_37x29");
        for (name, filter) in [
            ("lanczos_64x48", Filter::Lanczos),
            ("bilinear_64x48", Filter::Bilinear),
            ("nearest_64x48", Filter::Nearest),
        ] {
            let ours = resize(&small, (37, 29), 3, (64, 48), filter);
            assert_eq!(ours, get(name), "{name}");
        }
        let big = get("src_96x80");
        assert_eq!(
            resize(&big, (96, 80), 3, (40, 24), Filter::Lanczos),
            get("lanczos_40x24")
        );
    }

    /// Masks: RGB to L as Pillow, resized and binarised as diffusers' mask
    /// processor, downsampled to the latent as `F.interpolate`.
    #[test]
    fn mask_preprocessing_equals_diffusers() {
        let debug = debug();
        let rgb = bytes(&debug["mask.rgb_src"]);
        assert_eq!(
            crate::image_ops::rgb_to_luma(&rgb),
            bytes(&debug["mask.rgb_to_l"])
        );
        let read = |path: &str| {
            let data = std::fs::read(fixtures().join(path)).unwrap();
            let image = crate::image_input::decode_rgb(&data, &Default::default()).unwrap();
            GrayImage::from_rgb(&image)
        };
        let request = |width, height| GenerateRequest {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: None,
            steps: 1,
            cfg_scale: 1.0,
            sampler: crate::SamplerId::Euler,
            schedule_type: Default::default(),
            width,
            height,
            batch_size: 1,
            init: None,
            seed_per_image: false,
            hires: None,
            prompt_syntax: Default::default(),
            clip_skip: 0,
            loras: Vec::new(),
        };
        let device = Device::Cpu;
        let square = mask_tensor(
            &read("reference/img2img/inputs/mask-64x64.png"),
            &request(64, 64),
            &device,
        )
        .unwrap();
        assert_eq!(max_diff(&square, &debug["mask.mask_64x64_processed"]), 0.0);
        let latent = nearest_downsample(&square, 8, 8).unwrap();
        assert_eq!(max_diff(&latent, &debug["mask.latent_64x64"]), 0.0);
        let resized = mask_tensor(
            &read("reference/img2img/inputs/mask-80x56.png"),
            &request(64, 48),
            &device,
        )
        .unwrap();
        assert_eq!(max_diff(&resized, &debug["mask.mask_80x56_to_64x48"]), 0.0);
    }

    #[test]
    fn paste_back_puts_the_result_into_its_region_under_the_mask_only() {
        let canvas = DecodedImage {
            width: 8,
            height: 6,
            rgb: vec![10; 8 * 6 * 3],
        };
        let mut luma = vec![0u8; 8 * 6];
        for y in 1..5 {
            for x in 2..6 {
                luma[y * 8 + x] = 255;
            }
        }
        luma[8 + 2] = 128; // a half-on edge pixel blends
        let paste = PasteBack {
            canvas: std::sync::Arc::new(canvas.clone()),
            mask: std::sync::Arc::new(GrayImage {
                width: 8,
                height: 6,
                luma,
            }),
            region: (2, 1, 4, 4),
            padding: 0,
        };
        // An 8x8 result of 200 resized into the 4x4 region.
        let out = paste_back(&paste, &[200; 8 * 8 * 3], (8, 8));
        assert_eq!(out.len(), canvas.rgb.len());
        let px = |x: usize, y: usize| out[(y * 8 + x) * 3];
        assert_eq!((px(0, 0), px(7, 5), px(1, 3), px(6, 3)), (10, 10, 10, 10));
        assert_eq!((px(3, 2), px(5, 4)), (200, 200));
        assert_eq!(px(2, 1), ((10 * 127 + 200 * 128 + 127) / 255) as u8);
    }

    #[test]
    fn strength_picks_the_start_step_as_get_timesteps() {
        assert_eq!(start_step(6, 0.5), 3);
        assert_eq!(start_step(6, 0.6), 3); // 6 x 0.6 = 3.5999...
        assert_eq!(start_step(10, 0.3), 7);
        assert_eq!(start_step(4, 1.0), 0);
        assert_eq!(start_step(4, 0.1), 4);
    }
}
