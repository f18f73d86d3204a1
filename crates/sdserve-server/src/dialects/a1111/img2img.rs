//! `POST /sdapi/v1/img2img`: A1111's image-to-image and inpainting. The
//! request is txt2img's plus the init image, mask and their options; the
//! image is fitted to the output size as A1111's `resize_mode` says (with
//! Pillow-equal Lanczos), the mask inverted if asked, and the engine runs
//! diffusers' img2img or inpainting pipeline with `denoising_strength`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use utoipa::ToSchema;

use super::txt2img::{finish, submit};
use super::wire::{info_value, parameters, Txt2ImgRequest, Txt2ImgResponse};
use super::{A1111Errors, A1111};
use crate::config::Limits;
use crate::dialects::images;
use crate::engine_api::image_ops::{self, ResizeMode};
use crate::engine_api::{DecodedImage, GrayImage, PasteBack};
use crate::error::{ApiError, Rejection};
use crate::extract::{parse_json, Caller};
use crate::jobs::JobHandle;
use crate::state::AppState;
use crate::state::TextSettings;
use crate::validation::{InitSpec, JobSpec, ValidationError};

/// A1111's default `denoising_strength` for img2img.
pub const DEFAULT_DENOISING_STRENGTH: f64 = 0.75;

/// The img2img fields on top of txt2img's (those not listed here stay in
/// `base.extra` and are checked by `unsupported.rs`).
const IMG2IMG_FIELDS: [&str; 14] = [
    // instruct-pix2pix's image guidance: A1111 ignores it for other models,
    // and pix2pix UNets (8 input channels) are refused at load.
    "image_cfg_scale",
    "init_images",
    "mask",
    "denoising_strength",
    "resize_mode",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "include_init_images",
    "initial_noise_multiplier",
];

/// `POST /sdapi/v1/img2img` body: txt2img's fields plus these.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Img2ImgRequest {
    /// The txt2img fields (prompt, seed, sampler, size, batch...).
    #[serde(flatten)]
    pub base: Txt2ImgRequest,
    /// Base64 PNG or JPEG (a `data:` URL works); exactly one image.
    #[serde(default)]
    pub init_images: Vec<String>,
    /// Base64 mask: white repaints, black keeps (inpainting).
    pub mask: Option<String>,
    /// Fraction of the steps run from the image, in (0, 1] (default 0.75).
    #[schema(minimum = 0, maximum = 1)]
    pub denoising_strength: Option<f64>,
    /// 0 just resize (default), 1 crop and resize, 2 resize and fill, 3 just
    /// resize in latent space (the image encoded at its own size, its latents
    /// resized bilinearly; not with a mask).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub resize_mode: Option<i64>,
    /// Gaussian blur of the mask in pixels, both axes (default 4; 0 to 64):
    /// the blurred mask blends the original back in around the edit.
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub mask_blur: Option<i64>,
    /// 1 inverts the mask (black repaints).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub inpainting_mask_invert: Option<i64>,
    /// What the masked area starts from: only 1 ("original") is implemented.
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub inpainting_fill: Option<i64>,
    /// Inpaint only the masked region at full resolution: not implemented
    /// (refused with a mask; without one A1111 ignores it).
    pub inpaint_full_res: Option<bool>,
    /// Padding for `inpaint_full_res` (ignored while that is false, as in A1111).
    #[serde(default, deserialize_with = "crate::extract::whole_number::option_i64")]
    pub inpaint_full_res_padding: Option<i64>,
    /// Return the init images after the generated ones.
    pub include_init_images: Option<bool>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ValidationError::Invalid {
        field,
        message: message.into(),
    }
    .into()
}

impl Img2ImgRequest {
    /// The job this request asks for: txt2img's spec with the decoded images.
    fn to_spec(&self, limits: &Limits, settings_now: TextSettings) -> Result<JobSpec, ApiError> {
        let mut extra = self.base.extra.clone();
        for field in IMG2IMG_FIELDS {
            extra.remove(field);
        }
        let spec = self
            .base
            .to_spec_with_extra(limits, &extra, settings_now)
            .map_err(ApiError::from)?;
        // 3 is "just resize (latent upscale)": the image is encoded at its
        // own size and its latents resized (bilinear) to the output's.
        let resize_latents = self.resize_mode == Some(3);
        let resize = match self.resize_mode.unwrap_or(0) {
            0 | 3 => ResizeMode::Just,
            1 => ResizeMode::CropAndResize,
            2 => ResizeMode::ResizeAndFill,
            other => {
                return Err(invalid(
                    "resize_mode",
                    format!("must be 0 to 3, got {other}"),
                ))
            }
        };
        let blur = self.mask_blur_xy()?;
        if self.inpainting_fill.unwrap_or(1) != 1 && self.mask.is_some() {
            return Err(invalid(
                "inpainting_fill",
                "only 1 (original) is supported: the masked area starts from the image",
            ));
        }
        // Without a mask A1111 ignores inpaint_full_res (webuiapi sends true by default).
        let only_masked = self.inpaint_full_res == Some(true) && self.mask.is_some();
        let padding = match self.inpaint_full_res_padding.unwrap_or(32) {
            p @ 0..=MAX_PADDING => p as usize,
            p => {
                return Err(invalid(
                    "inpaint_full_res_padding",
                    format!("must be 0 to {MAX_PADDING} pixels, got {p}"),
                ))
            }
        };
        if let Some(value) = self.base.extra.get("initial_noise_multiplier") {
            if value.as_f64() != Some(1.0) {
                return Err(invalid("initial_noise_multiplier", "only 1.0 is supported"));
            }
        }
        let [image] = self.init_images.as_slice() else {
            return Err(invalid(
                "init_images",
                format!(
                    "exactly one image is supported, got {}",
                    self.init_images.len()
                ),
            ));
        };
        let image = images::decode_base64("init_images", image)?;
        let (width, height) = output_size(&spec, limits)?;
        let mut mask_field = self.mask.as_ref();
        if let (true, Some(mask)) = (only_masked, mask_field) {
            if resize_latents {
                return Err(invalid(
                    "resize_mode",
                    "3 (latent upscale) with a mask is not supported; use 0, 1 or 2 for inpainting",
                ));
            }
            let mask = self.prepare_mask(mask, blur)?;
            match only_masked_init(&image, mask, (width, height), padding)? {
                Some(init) => {
                    return Ok(JobSpec {
                        width: Some(width as i64),
                        height: Some(height as i64),
                        init: Some(InitSpec {
                            strength: self.denoising_strength,
                            ..init
                        }),
                        ..spec
                    })
                }
                // A blank mask: A1111 inpaints nothing and runs img2img on the whole picture.
                None => mask_field = None,
            }
        }
        let image = if resize_latents {
            if self.mask.is_some() {
                return Err(invalid(
                    "resize_mode",
                    "3 (latent upscale) with a mask is not supported; use 0, 1 or 2 for inpainting",
                ));
            }
            // Encoded at its own size: the output's limits bound it too.
            let own = JobSpec {
                width: Some(image.width as i64),
                height: Some(image.height as i64),
                ..spec.clone()
            };
            output_size(&own, limits).map_err(|e| match e {
                ApiError::Validation(v) => invalid(
                    "init_images",
                    format!("with resize_mode 3 the image is encoded at its own size: {v}"),
                ),
                other => other,
            })?;
            image
        } else {
            Arc::new(fit_image(&image, width, height, resize))
        };
        let (mask, overlay) = match mask_field {
            Some(mask) => {
                let mask = self.prepare_mask(mask, blur)?;
                let mask = fit_mask(&mask, width, height, resize);
                // A1111's mask_for_overlay: the blurred mask doubled, so the
                // result is fully generated where the mask is at least half on.
                let overlay = GrayImage {
                    luma: mask.luma.iter().map(|v| v.saturating_mul(2)).collect(),
                    ..mask.clone()
                };
                (Some(Arc::new(mask)), Some(Arc::new(overlay)))
            }
            None => (None, None),
        };
        Ok(JobSpec {
            width: Some(width as i64),
            height: Some(height as i64),
            init: Some(InitSpec {
                image,
                mask,
                strength: self.denoising_strength,
                default_strength: DEFAULT_DENOISING_STRENGTH,
                strength_field: "denoising_strength",
                resize_latents,
                overlay,
                paste: None,
            }),
            ..spec
        })
    }
}

impl Img2ImgRequest {
    /// `mask_blur` (both axes) or `mask_blur_x` / `mask_blur_y`, default 4 each.
    fn mask_blur_xy(&self) -> Result<(f64, f64), ApiError> {
        let axis = |field: &'static str, value: Option<i64>| -> Result<f64, ApiError> {
            match value.unwrap_or(4) {
                v @ 0..=MAX_MASK_BLUR => Ok(v as f64),
                v => Err(invalid(
                    field,
                    format!("must be 0 to {MAX_MASK_BLUR} pixels, got {v}"),
                )),
            }
        };
        let extra = |field: &str| -> Result<Option<i64>, ApiError> {
            match self.base.extra.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(f) if f.fract() == 0.0 => Ok(Some(f as i64)),
                    _ => Err(invalid(
                        "mask_blur",
                        format!("`{field}` must be a whole number, got {v}"),
                    )),
                },
            }
        };
        match self.mask_blur {
            Some(both) => {
                let b = axis("mask_blur", Some(both))?;
                Ok((b, b))
            }
            None => Ok((
                axis("mask_blur_x", extra("mask_blur_x")?)?,
                axis("mask_blur_y", extra("mask_blur_y")?)?,
            )),
        }
    }

    /// A1111's mask: an RGBA mask with transparency is its alpha above 128,
    /// else its gray (`convert("L")`); inverted if asked; blurred (OpenCV's
    /// Gaussian, x then y) at its own size.
    fn prepare_mask(
        &self,
        mask: &str,
        (blur_x, blur_y): (f64, f64),
    ) -> Result<GrayImage, ApiError> {
        let bytes = images::base64_bytes("mask", mask)?;
        let (rgb, alpha) = images::decode_with_alpha("mask", &bytes)?;
        let mut luma = match alpha {
            Some(alpha) if alpha.iter().any(|a| *a != 255) => alpha
                .iter()
                .map(|a| if *a > 128 { 255 } else { 0 })
                .collect(),
            _ => image_ops::rgb_to_luma(&rgb.rgb),
        };
        if self.inpainting_mask_invert.unwrap_or(0) != 0 {
            luma.iter_mut().for_each(|v| *v = 255 - *v);
        }
        let size = (rgb.width, rgb.height);
        let luma = image_ops::gaussian_blur(&luma, size, blur_x, blur_y);
        Ok(GrayImage {
            width: rgb.width,
            height: rgb.height,
            luma,
        })
    }
}

/// The largest `mask_blur` accepted: a 321-tap kernel, about a second on a megapixel mask.
const MAX_MASK_BLUR: i64 = 64;

/// The largest `inpaint_full_res_padding` (the top of A1111's slider).
const MAX_PADDING: i64 = 256;

/// A1111's "inpaint only masked" (`inpaint_full_res`): the mask's bounding
/// box (`get_crop_region`) grown by `padding`, expanded to the output's
/// aspect (`expand_crop_region`); image and mask cropped there and resized
/// to the output size "resize and fill"; the result pasted back into the
/// whole image with the blurred mask as overlay. `None` for a blank mask.
fn only_masked_init(
    image: &Arc<DecodedImage>,
    mask: GrayImage,
    (width, height): (usize, usize),
    padding: usize,
) -> Result<Option<InitSpec>, ApiError> {
    if (mask.width, mask.height) != (image.width, image.height) {
        return Err(invalid(
            "mask",
            format!(
                "inpainting only the masked area needs the mask at the image's size, {}x{}; got {}x{}",
                image.width, image.height, mask.width, mask.height
            ),
        ));
    }
    let Some(bbox) = crop_region(&mask, padding) else {
        return Ok(None);
    };
    let (x1, y1, x2, y2) = expand_crop_region(bbox, (width, height), (mask.width, mask.height));
    let (w, h) = (x2 - x1, y2 - y1);
    let crop = |pixels: &[u8], stride: usize, channels: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(w * h * channels);
        for row in y1..y2 {
            let from = (row * stride + x1) * channels;
            out.extend_from_slice(&pixels[from..from + w * channels]);
        }
        out
    };
    let fill = ResizeMode::ResizeAndFill;
    let rgb = image_ops::fit(
        &crop(&image.rgb, image.width, 3),
        (w, h),
        3,
        (width, height),
        fill,
    );
    let luma = image_ops::fit(
        &crop(&mask.luma, mask.width, 1),
        (w, h),
        1,
        (width, height),
        fill,
    );
    Ok(Some(InitSpec {
        image: Arc::new(DecodedImage { width, height, rgb }),
        mask: Some(Arc::new(GrayImage {
            width,
            height,
            luma,
        })),
        strength: None,
        default_strength: DEFAULT_DENOISING_STRENGTH,
        strength_field: "denoising_strength",
        resize_latents: false,
        overlay: None,
        paste: Some(Arc::new(PasteBack {
            canvas: image.clone(),
            mask: Arc::new(mask),
            region: (x1, y1, w, h),
            padding,
        })),
    }))
}

/// A1111's `get_crop_region`: the bounding box `(x1, y1, x2, y2)` of the
/// mask's non-zero pixels grown by `pad`, within the mask; `None` if blank.
fn crop_region(mask: &GrayImage, pad: usize) -> Option<(usize, usize, usize, usize)> {
    let (w, h) = (mask.width, mask.height);
    let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if mask.luma[y * w + x] != 0 {
                x1 = x1.min(x);
                y1 = y1.min(y);
                x2 = x2.max(x + 1);
                y2 = y2.max(y + 1);
            }
        }
    }
    (x1 != usize::MAX).then(|| {
        (
            x1.saturating_sub(pad),
            y1.saturating_sub(pad),
            (x2 + pad).min(w),
            (y2 + pad).min(h),
        )
    })
}

/// A1111's `expand_crop_region`: `region` grown along one axis to the
/// processing size's aspect, shifted back inside the image, clipped to it.
fn expand_crop_region(
    (x1, y1, x2, y2): (usize, usize, usize, usize),
    (pw, ph): (usize, usize),
    (iw, ih): (usize, usize),
) -> (usize, usize, usize, usize) {
    let (mut x1, mut y1, mut x2, mut y2) = (x1 as i64, y1 as i64, x2 as i64, y2 as i64);
    let (iw, ih) = (iw as i64, ih as i64);
    let ratio_region = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = pw as f64 / ph as f64;
    // Grows [lo, hi) to `desired`, keeping it inside [0, limit] as A1111 does.
    let grow = |lo: &mut i64, hi: &mut i64, desired: f64, limit: i64| {
        let diff = (desired - (*hi - *lo) as f64) as i64;
        *lo -= diff.div_euclid(2);
        *hi += diff - diff.div_euclid(2);
        if *hi >= limit {
            let over = *hi - limit;
            *hi -= over;
            *lo -= over;
        }
        if *lo < 0 {
            *hi -= *lo;
            *lo = 0;
        }
        if *hi >= limit {
            *hi = limit;
        }
    };
    if ratio_region > ratio_processing {
        grow(&mut y1, &mut y2, (x2 - x1) as f64 / ratio_processing, ih);
    } else {
        grow(&mut x1, &mut x2, (y2 - y1) as f64 * ratio_processing, iw);
    }
    (x1 as usize, y1 as usize, x2 as usize, y2 as usize)
}

/// A1111's img2img size: the request's, else 512 (its API default), within
/// the configured limits before any pixel buffer of that size exists.
fn output_size(spec: &JobSpec, limits: &Limits) -> Result<(usize, usize), ApiError> {
    let size = |value: Option<i64>, field: &'static str, max: usize| {
        let got = value.unwrap_or(512);
        match usize::try_from(got) {
            Ok(v) if v > 0 && v <= max => Ok(v),
            Ok(v) if v > 0 => Err(ValidationError::TooLarge { field, max, got }),
            _ => Err(ValidationError::NotPositive { field, got }),
        }
    };
    let width = size(spec.width, "width", limits.max_width)?;
    let height = size(spec.height, "height", limits.max_height)?;
    let pixels = width * height;
    if pixels > limits.max_pixels {
        return Err(ValidationError::TooManyPixels {
            field: "width",
            width,
            height,
            pixels,
            max: limits.max_pixels,
        }
        .into());
    }
    Ok((width, height))
}

/// A1111's `resize_image`: 0 stretches, 1 scales to cover and crops the
/// centre, 2 scales to fit and fills the rest with the edge rows or columns.
fn fit_image(image: &DecodedImage, width: usize, height: usize, mode: ResizeMode) -> DecodedImage {
    let rgb = image_ops::fit(
        &image.rgb,
        (image.width, image.height),
        3,
        (width, height),
        mode,
    );
    DecodedImage { width, height, rgb }
}

fn fit_mask(mask: &GrayImage, width: usize, height: usize, mode: ResizeMode) -> GrayImage {
    let luma = image_ops::fit(
        &mask.luma,
        (mask.width, mask.height),
        1,
        (width, height),
        mode,
    );
    GrayImage {
        width,
        height,
        luma,
    }
}

/// Image to image, with or without a mask (A1111 compatible).
#[utoipa::path(post, path = "/sdapi/v1/img2img", tag = "a1111", request_body = Img2ImgRequest,
    responses((status = 200, description = "Images and generation info", body = Txt2ImgResponse),
        A1111Errors))]
pub async fn img2img(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Txt2ImgResponse>, Rejection<A1111>> {
    let limits = &state.config.limits;
    let (request, spec) = match parse_json::<Img2ImgRequest>(body, limits.max_body_bytes) {
        Ok(request) => {
            let spec = request.to_spec(limits, state.a1111_text());
            (request, spec)
        }
        Err(e) => (Img2ImgRequest::default(), Err(e)),
    };
    let handle = submit(&state, &caller, &request.base, spec).await?;
    let response = respond(&state, &handle, &request).await;
    finish(&state, &handle, &request.base).await;
    response.map(Json)
}

/// The answer for a finished job: txt2img's, with the strength and whether
/// it inpainted.
async fn respond(
    state: &AppState,
    handle: &JobHandle,
    request: &Img2ImgRequest,
) -> Result<Txt2ImgResponse, Rejection<A1111>> {
    let snapshot = state.wait_success(handle).await?;
    let mut images = Vec::new();
    if request.base.send_images.unwrap_or(true) {
        let pngs = state.job_pngs(&snapshot).await?;
        images.extend(
            pngs.iter()
                .map(|png| base64::engine::general_purpose::STANDARD.encode(png)),
        );
        if request.include_init_images.unwrap_or(false) {
            images.extend(request.init_images.iter().cloned());
        }
    }
    let model = state.job_model(&snapshot);
    let strength = snapshot.params.strength;
    let mut parameters = parameters(&request.base, &snapshot);
    parameters["denoising_strength"] = strength.into();
    parameters["init_images"] = serde_json::Value::Null;
    parameters["mask"] = serde_json::Value::Null;
    let mut info = info_value(&request.base, &snapshot, model.as_ref());
    info["denoising_strength"] = strength.into();
    info["is_using_inpainting_conditioning"] = snapshot.params.inpainting.into();
    Ok(Txt2ImgResponse {
        images,
        parameters,
        info: info.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize) -> DecodedImage {
        let rgb = (0..w * h)
            .flat_map(|i| [(i % 251) as u8, (i / w) as u8, 7])
            .collect();
        DecodedImage {
            width: w,
            height: h,
            rgb,
        }
    }

    #[test]
    fn crop_regions_follow_a1111() {
        let mut mask = GrayImage {
            width: 50,
            height: 40,
            luma: vec![0; 2000],
        };
        assert_eq!(crop_region(&mask, 4), None);
        for (x, y) in [(12, 10), (17, 30)] {
            mask.luma[y * 50 + x] = 1;
        }
        assert_eq!(crop_region(&mask, 0), Some((12, 10, 18, 31)));
        assert_eq!(crop_region(&mask, 20), Some((0, 0, 38, 40)));
        // Narrower than 1:1: widened about the centre (A1111's int and //).
        assert_eq!(
            expand_crop_region((10, 10, 20, 40), (64, 64), (50, 40)),
            (0, 10, 30, 40)
        );
        // At the right edge: shifted back inside.
        assert_eq!(
            expand_crop_region((45, 0, 50, 20), (64, 64), (50, 40)),
            (30, 0, 50, 20)
        );
        // Wider than 2:1 processing: grown in height, clipped to the image.
        assert_eq!(
            expand_crop_region((0, 15, 50, 25), (64, 32), (50, 40)),
            (0, 8, 50, 33)
        );
        assert_eq!(
            expand_crop_region((0, 0, 50, 40), (32, 64), (50, 40)),
            (0, 0, 50, 40)
        );
    }

    #[test]
    fn resize_modes_give_the_output_size_and_fill_or_crop_as_a1111() {
        let wide = image(40, 20);
        for mode in [
            ResizeMode::Just,
            ResizeMode::CropAndResize,
            ResizeMode::ResizeAndFill,
        ] {
            let out = fit_image(&wide, 16, 16, mode);
            assert_eq!(
                (out.width, out.height, out.rgb.len()),
                (16, 16, 16 * 16 * 3)
            );
        }
        // Resize and fill: a 40x20 image in 16x16 is 16x8 in the middle; the
        // bands above and below repeat its first and last rows.
        let fill = fit_image(&wide, 16, 16, ResizeMode::ResizeAndFill);
        let row = |img: &DecodedImage, y: usize| img.rgb[y * 48..(y + 1) * 48].to_vec();
        assert_eq!(row(&fill, 0), row(&fill, 4));
        assert_eq!(row(&fill, 15), row(&fill, 11));
        // Crop and resize: 40x20 scaled to 32x16, the centre 16 columns kept.
        let crop = fit_image(&wide, 16, 16, ResizeMode::CropAndResize);
        let scaled =
            image_ops::resize(&wide.rgb, (40, 20), 3, (32, 16), image_ops::Filter::Lanczos);
        assert_eq!(&crop.rgb[..48], &scaled[8 * 3..24 * 3]);
    }
}
