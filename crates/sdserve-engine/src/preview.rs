//! Live previews: a latent cell's RGB by A1111's "Approx cheap" linear
//! projection (a fixed 4x3 matrix per family), at latent resolution. Good
//! enough to watch an image form, costs one tiny matrix product per step.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::Family;
use crate::tiny_vae::TinyVaeDecoder;

/// SD 1.x/2.x latent channels to RGB (A1111 `sd_vae_approx.cheap_approximation`).
const SD_COEFFICIENTS: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// SDXL's latent space.
const SDXL_COEFFICIENTS: [[f32; 3]; 4] = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
];

/// A preview image, 8-bit RGB, row-major, at latent resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// The index of the request (in the batch) whose latents it shows, so a
    /// server shows it to that request's owner only.
    pub job: usize,
}

/// The first image of `latents` (`(n, 4, h, w)`, in the UNet's input scale)
/// as RGB; `None` for latent spaces without 4 channels.
pub fn cheap_preview(latents: &Tensor, family: Family) -> Result<Option<Preview>> {
    let (_, channels, height, width) = latents.dims4()?;
    if channels != 4 {
        return Ok(None);
    }
    let coefficients = match family {
        Family::Sd => &SD_COEFFICIENTS,
        Family::Sdxl => &SDXL_COEFFICIENTS,
    };
    // (h*w, 4) x (4, 3) -> (h*w, 3)
    let cells = latents
        .narrow(0, 0, 1)?
        .to_dtype(DType::F32)?
        .reshape((4, height * width))?
        .t()?
        .contiguous()?;
    let matrix = Tensor::from_vec(
        coefficients.iter().flatten().copied().collect::<Vec<f32>>(),
        (4, 3),
        cells.device(),
    )?;
    let rgb: Vec<f32> = cells.matmul(&matrix)?.flatten_all()?.to_vec1()?;
    let rgb = rgb
        .iter()
        .map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8)
        .collect();
    Ok(Some(Preview {
        width,
        height,
        rgb,
        job: 0,
    }))
}

/// The first image of `latents` (as [`cheap_preview`] takes them) decoded by
/// the tiny VAE (`--tiny-vae`) at full resolution: A1111's "TAESD" live
/// preview method.
pub fn tiny_vae_preview(
    latents: &Tensor,
    tiny: &TinyVaeDecoder,
    dtype: DType,
) -> Result<Option<Preview>> {
    let first = (latents.narrow(0, 0, 1)? / tiny.scaling_factor)?.to_dtype(dtype)?;
    let (width, height, rgb) = crate::vae::to_rgb(&tiny.decode(&first)?)?;
    Ok(Some(Preview {
        width,
        height,
        rgb,
        job: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_channel_projects_through_its_row_of_the_matrix() {
        // One cell, channel 0 = 1: RGB = (1 + row 0) / 2.
        let latents =
            Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 0.0], (1, 4, 1, 1), &Device::Cpu).unwrap();
        let preview = cheap_preview(&latents, Family::Sd).unwrap().unwrap();
        assert_eq!((preview.width, preview.height), (1, 1));
        let want: Vec<u8> = SD_COEFFICIENTS[0]
            .iter()
            .map(|c| (((1.0 + c) / 2.0) * 255.0) as u8)
            .collect();
        assert_eq!(preview.rgb, want);
        let eight = Tensor::zeros((1, 8, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(cheap_preview(&eight, Family::Sd).unwrap().is_none());
    }
}
