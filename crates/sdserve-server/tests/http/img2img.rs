//! Image-to-image in every dialect: native `init_image` (base64 or image id),
//! A1111's `/sdapi/v1/img2img` (resize, mask, blur, overlay, refusals by
//! name), OpenAI's multipart `/v1/images/edits` (alpha as the mask), and
//! A1111's per-image batch seeds. The fake backend folds the init image,
//! mask, overlay and strength into its pixels, so equal bytes mean the
//! request reached the engine as built here.

use std::sync::Arc;

use base64::Engine as _;
use sdserve_engine::image_input::DecodedImage;
use sdserve_engine::image_ops::{self, GrayImage};
use sdserve_engine::request::{ImageToImage, PasteBack};
use sdserve_engine::{png, GeneratedImage};
use serde_json::{json, Value};

use crate::common::{assert_error, b64, expected_pngs, request, TestServer};

fn picture(width: usize, height: usize) -> DecodedImage {
    let rgb = (0..width * height)
        .flat_map(|i| [(i % 256) as u8, (i / width * 4) as u8, 90])
        .collect();
    DecodedImage { width, height, rgb }
}

fn png_of(image: &DecodedImage) -> Vec<u8> {
    png::encode_png(&GeneratedImage {
        width: image.width,
        height: image.height,
        rgb: image.rgb.clone(),
        seed: 0,
        infotext: String::new(),
    })
    .unwrap()
}

/// A base64 PNG picture of `width` x `height` (for other modules' tests).
pub fn png_b64(width: usize, height: usize) -> String {
    base64_of(&png_of(&picture(width, height)))
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A mask: the right half white.
fn half_mask(width: usize, height: usize) -> DecodedImage {
    let rgb = (0..width * height)
        .flat_map(|i| {
            if i % width >= width / 2 {
                [255; 3]
            } else {
                [0; 3]
            }
        })
        .collect();
    DecodedImage { width, height, rgb }
}

#[tokio::test]
async fn native_init_image_as_base64_or_image_id_reaches_the_engine() {
    let s = TestServer::start().await;
    let init = picture(64, 64);
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "a cat", "seed": 3, "init_image": base64_of(&png_of(&init)), "strength": 0.5}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let mut want = request("a cat", 3);
    want.init = Some(ImageToImage {
        image: Arc::new(init),
        mask: None,
        strength: 0.5,
        resize_latents: false,
        overlay: None,
        paste: None,
    });
    let image_url = job["images"][0]["url"].as_str().unwrap();
    let got = s.get(image_url).await.bytes().await.unwrap();
    assert_eq!(got.to_vec(), expected_pngs(&want)[0]);

    // The image just made, by id, with a mask as a data URL: inpainting at strength 1.
    let image_id = job["images"][0]["id"].as_str().unwrap();
    let mask = half_mask(64, 64);
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "a cat", "seed": 3, "init_image": image_id,
                   "mask": format!("data:image/png;base64,{}", base64_of(&png_of(&mask)))}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = s.wait_job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, _, first_rgb) = png::decode_rgb(&got).unwrap();
    want.init = Some(ImageToImage {
        image: Arc::new(DecodedImage {
            width: 64,
            height: 64,
            rgb: first_rgb,
        }),
        mask: Some(Arc::new(GrayImage::from_rgb(&mask))),
        strength: 1.0,
        resize_latents: false,
        overlay: None,
        paste: None,
    });
    let got = s
        .get(job["images"][0]["url"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), expected_pngs(&want)[0]);
}

#[tokio::test]
async fn native_image_fields_are_checked_by_name() {
    let s = TestServer::start().await;
    let init = base64_of(&png_of(&picture(64, 64)));
    let cases = [
        (json!({"prompt": "x", "mask": init}), 422, "mask"),
        (json!({"prompt": "x", "strength": 0.5}), 422, "strength"),
        (
            json!({"prompt": "x", "init_image": init, "strength": 0.0}),
            422,
            "strength",
        ),
        (
            json!({"prompt": "x", "init_image": init, "strength": 1.5}),
            422,
            "strength",
        ),
        (
            json!({"prompt": "x", "init_image": "not base64!"}),
            422,
            "init_image",
        ),
        (
            json!({"prompt": "x", "init_image": base64_of(b"GIF89a....")}),
            422,
            "init_image",
        ),
        (
            json!({"prompt": "x", "init_image": "67e55044-10b1-426f-9247-bb680e5fe0c8"}),
            404,
            "67e55044",
        ),
    ];
    for (body, status, needle) in cases {
        let resp = s.post("/api/v1/jobs", body.clone()).await;
        assert_error(resp, status, needle).await;
    }
    // A PNG claiming 100000 pixels a side is refused before decoding: 413.
    let mut huge = png_of(&picture(8, 8));
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    let resp = s
        .post(
            "/api/v1/jobs",
            json!({"prompt": "x", "init_image": base64_of(&huge)}),
        )
        .await;
    assert_error(resp, 413, "init_image").await;
}

#[tokio::test]
async fn a1111_img2img_with_and_without_a_mask() {
    let s = TestServer::start().await;
    let init = picture(64, 64);
    let body = json!({
        "init_images": [format!("data:image/png;base64,{}", base64_of(&png_of(&init)))],
        "prompt": "a cat", "seed": 9, "steps": 4, "cfg_scale": 7.0, "sampler_name": "Euler a",
        "width": 64, "height": 64, "denoising_strength": 0.4, "resize_mode": 0,
        "image_cfg_scale": 1.5, "include_init_images": false, "initial_noise_multiplier": 1.0,
        // webuiapi's defaults, which A1111 ignores without a mask.
        "inpaint_full_res": true, "inpainting_fill": 0, "mask_blur": 4, "inpaint_full_res_padding": 0,
    });
    let resp = s.post("/sdapi/v1/img2img", body.clone()).await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let mut want = request("a cat", 9);
    want.init = Some(ImageToImage {
        image: Arc::new(init.clone()),
        mask: None,
        strength: 0.4,
        resize_latents: false,
        overlay: None,
        paste: None,
    });
    assert_eq!(
        b64(out["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );
    let info: Value = serde_json::from_str(out["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.4);
    assert_eq!(info["all_seeds"], json!([9]));
    assert_eq!(out["parameters"]["denoising_strength"], 0.4);

    // With a mask (blur 0) and inverted: black repaints; the overlay is the
    // (inverted) mask doubled.
    let mask = half_mask(64, 64);
    let mut masked = body.clone();
    masked["mask"] = base64_of(&png_of(&mask)).into();
    masked["mask_blur"] = 0.into();
    masked["inpainting_mask_invert"] = 1.into();
    masked["inpainting_fill"] = 1.into();
    masked["inpaint_full_res"] = false.into();
    let resp = s.post("/sdapi/v1/img2img", masked).await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let inverted: Vec<u8> = GrayImage::from_rgb(&mask)
        .luma
        .iter()
        .map(|v| 255 - v)
        .collect();
    let gray = |luma: Vec<u8>| {
        Arc::new(GrayImage {
            width: 64,
            height: 64,
            luma,
        })
    };
    want.init = Some(ImageToImage {
        image: Arc::new(init.clone()),
        mask: Some(gray(inverted.clone())),
        strength: 0.4,
        resize_latents: false,
        overlay: Some(gray(inverted.iter().map(|v| v.saturating_mul(2)).collect())),
        paste: None,
    });
    assert_eq!(
        b64(out["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );
    let info: Value = serde_json::from_str(out["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["is_using_inpainting_conditioning"], true);

    // The default blur (4) softens the mask before it reaches the engine.
    let mut blurred = body.clone();
    blurred["mask"] = base64_of(&png_of(&mask)).into();
    blurred["inpainting_fill"] = 1.into();
    blurred["inpaint_full_res"] = false.into();
    let resp = s.post("/sdapi/v1/img2img", blurred).await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let soft = image_ops::gaussian_blur(&GrayImage::from_rgb(&mask).luma, (64, 64), 4.0, 4.0);
    want.init = Some(ImageToImage {
        image: Arc::new(init),
        mask: Some(gray(soft.clone())),
        strength: 0.4,
        resize_latents: false,
        overlay: Some(gray(soft.iter().map(|v| v.saturating_mul(2)).collect())),
        paste: None,
    });
    assert_eq!(
        b64(out["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );
}

#[tokio::test]
async fn a1111_img2img_resizes_as_resize_mode_says() {
    let s = TestServer::start().await;
    let wide = picture(80, 40);
    for mode in 0..3 {
        let resp = s
            .post(
                "/sdapi/v1/img2img",
                json!({"init_images": [base64_of(&png_of(&wide))], "prompt": "p", "seed": 1,
                       "width": 64, "height": 64, "resize_mode": mode}),
            )
            .await;
        assert_eq!(resp.status(), 200, "resize_mode {mode}");
        let out: Value = resp.json().await.unwrap();
        let (w, h, _) = png::decode_rgb(&b64(out["images"][0].as_str().unwrap())).unwrap();
        assert_eq!((w, h), (64, 64));
    }

    // 3, latent upscale: the image reaches the engine at its own size, with
    // its latents to be resized.
    let out: Value = s
        .post(
            "/sdapi/v1/img2img",
            json!({"init_images": [base64_of(&png_of(&wide))], "prompt": "p", "seed": 1,
                   "steps": 4, "cfg_scale": 7.0, "sampler_name": "Euler a", "width": 64,
                   "height": 64, "resize_mode": 3, "denoising_strength": 0.5}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut want = request("p", 1);
    want.init = Some(ImageToImage {
        image: Arc::new(wide.clone()),
        mask: None,
        strength: 0.5,
        resize_latents: true,
        overlay: None,
        paste: None,
    });
    assert_eq!(
        b64(out["images"][0].as_str().unwrap()),
        expected_pngs(&want)[0]
    );
    // Its own size is bounded by the size limits too.
    let big = picture(2056, 8);
    let resp = s
        .post(
            "/sdapi/v1/img2img",
            json!({"init_images": [base64_of(&png_of(&big))], "prompt": "p",
                   "width": 64, "height": 64, "resize_mode": 3}),
        )
        .await;
    assert_error(resp, 422, "init_images").await;
}

/// "Inpaint only masked": the job runs on the mask's padded bounding box,
/// grown to the output's aspect and resized "resize and fill", and pastes
/// its result back into the whole image (the answer is the image's size).
#[tokio::test]
async fn a1111_only_masked_inpaints_the_crop_and_pastes_it_back() {
    let s = TestServer::start().await;
    let init = picture(96, 64);
    // A 16x16 square at (60, 20).
    let rgb = (0..96 * 64)
        .flat_map(|i| {
            let (x, y) = (i % 96, i / 96);
            if (60..76).contains(&x) && (20..36).contains(&y) {
                [255; 3]
            } else {
                [0; 3]
            }
        })
        .collect();
    let mask = DecodedImage {
        width: 96,
        height: 64,
        rgb,
    };
    let body = json!({
        "init_images": [base64_of(&png_of(&init))], "mask": base64_of(&png_of(&mask)),
        "prompt": "a cat", "seed": 9, "steps": 4, "cfg_scale": 7.0, "sampler_name": "Euler a",
        "width": 64, "height": 64, "denoising_strength": 0.5, "mask_blur": 0,
        "inpainting_fill": 1, "inpaint_full_res": true, "inpaint_full_res_padding": 8,
    });
    let resp = s.post("/sdapi/v1/img2img", body).await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    // The box (60, 20)-(76, 36) padded by 8 is 32x32 at (52, 12): already 1:1.
    let (x, y, w, h) = (52, 12, 32, 32);
    let crop = |pixels: &[u8], stride: usize, c: usize| -> Vec<u8> {
        (y..y + h)
            .flat_map(|r| pixels[(r * stride + x) * c..(r * stride + x + w) * c].to_vec())
            .collect()
    };
    let fill = image_ops::ResizeMode::ResizeAndFill;
    let luma = GrayImage::from_rgb(&mask).luma;
    let mut want = request("a cat", 9);
    want.init = Some(ImageToImage {
        image: Arc::new(DecodedImage {
            width: 64,
            height: 64,
            rgb: image_ops::fit(&crop(&init.rgb, 96, 3), (w, h), 3, (64, 64), fill),
        }),
        mask: Some(Arc::new(GrayImage {
            width: 64,
            height: 64,
            luma: image_ops::fit(&crop(&luma, 96, 1), (w, h), 1, (64, 64), fill),
        })),
        strength: 0.5,
        resize_latents: false,
        overlay: None,
        paste: Some(Arc::new(PasteBack {
            canvas: Arc::new(init.clone()),
            mask: Arc::new(GrayImage {
                width: 96,
                height: 64,
                luma,
            }),
            region: (x, y, w, h),
            padding: 8,
        })),
    });
    let png = b64(out["images"][0].as_str().unwrap());
    assert_eq!(png, expected_pngs(&want)[0]);
    let (width, height, _) = png::decode_rgb(&png).unwrap();
    assert_eq!((width, height), (96, 64));
}

#[tokio::test]
async fn a1111_img2img_refuses_what_it_does_not_implement_by_name() {
    let s = TestServer::start().await;
    let init = format!(
        "data:image/png;base64,{}",
        base64_of(&png_of(&picture(64, 64)))
    );
    let mask = base64_of(&png_of(&half_mask(64, 64)));
    let cases = [
        (json!({"init_images": []}), "init_images"),
        (json!({"init_images": [init, init]}), "init_images"),
        (
            json!({"init_images": [init], "resize_mode": 3, "mask": mask}),
            "resize_mode",
        ),
        (
            json!({"init_images": [init], "resize_mode": 7}),
            "resize_mode",
        ),
        (
            json!({"init_images": [init], "mask": mask, "inpaint_full_res": true, "inpaint_full_res_padding": 300}),
            "inpaint_full_res_padding",
        ),
        (
            json!({"init_images": [init], "mask": base64_of(&png_of(&half_mask(32, 32))), "inpaint_full_res": true}),
            "mask",
        ),
        (
            json!({"init_images": [init], "mask": mask, "inpainting_fill": 0, "inpaint_full_res": false}),
            "inpainting_fill",
        ),
        (
            json!({"init_images": [init], "mask_blur": 500}),
            "mask_blur",
        ),
        (
            json!({"init_images": [init], "denoising_strength": 0}),
            "denoising_strength",
        ),
        (
            json!({"init_images": [init], "initial_noise_multiplier": 0.5}),
            "initial_noise_multiplier",
        ),
        (json!({"init_images": [init], "width": 100000}), "width"),
        (json!({"init_images": ["%%%"]}), "init_images"),
        (
            json!({"init_images": [init], "restore_faces": true}),
            "restore_faces",
        ),
    ];
    for (body, field) in cases {
        let resp = s.post("/sdapi/v1/img2img", body.clone()).await;
        let err = assert_error(resp, 422, field).await;
        assert_eq!(err["detail"][0]["loc"][1], field, "{body}");
    }
}

#[tokio::test]
async fn a1111_batches_give_image_i_the_seed_plus_i() {
    let s = TestServer::start().await;
    let resp = s
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "a cat", "seed": 5, "batch_size": 2, "n_iter": 2, "steps": 4,
                   "cfg_scale": 7.0, "sampler_name": "Euler a", "width": 64, "height": 64}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let info: Value = serde_json::from_str(out["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([5, 6, 7, 8]));
    for (i, image) in out["images"].as_array().unwrap().iter().enumerate() {
        let alone = request("a cat", 5 + i as u64);
        assert_eq!(
            b64(image.as_str().unwrap()),
            expected_pngs(&alone)[0],
            "image {i}"
        );
    }
}

/// One form part: name, file name (for files), content.
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart body as the OpenAI SDKs send it.
fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "sdserve-test-boundary";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An RGBA PNG: transparent (alpha 0) on the left half.
fn rgba_mask(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = ::png::Encoder::new(&mut out, width, height);
        e.set_color(::png::ColorType::Rgba);
        e.set_depth(::png::BitDepth::Eight);
        let data: Vec<u8> = (0..width * height)
            .flat_map(|i| [0, 0, 0, if i % width < width / 2 { 0 } else { 255 }])
            .collect();
        let mut w = e.write_header().unwrap();
        w.write_image_data(&data).unwrap();
    }
    out
}

#[tokio::test]
async fn openai_edits_inpaint_the_transparent_pixels() {
    let s = TestServer::start().await;
    let init = picture(64, 64);
    let image_png = png_of(&init);
    let mask_png = rgba_mask(64, 64);
    let (content_type, body) = multipart(&[
        ("image", Some("image.png"), &image_png),
        ("mask", Some("mask.png"), &mask_png),
        ("prompt", None, b"a cat"),
        ("n", None, b"1"),
        ("size", None, b"64x64"),
        ("response_format", None, b"b64_json"),
        ("seed", None, b"12"),
        ("steps", None, b"4"),
        ("cfg_scale", None, b"7"),
        ("sampler", None, b"Euler a"),
    ]);
    let client = reqwest::Client::new();
    let resp = client
        .post(s.url("/v1/images/edits"))
        .header("content-type", &content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let mask: Vec<u8> = (0..64 * 64)
        .map(|i| if i % 64 < 32 { 255 } else { 0 })
        .collect();
    let mut want = request("a cat", 12);
    want.init = Some(ImageToImage {
        image: Arc::new(init),
        mask: Some(Arc::new(GrayImage {
            width: 64,
            height: 64,
            luma: mask,
        })),
        strength: 1.0,
        resize_latents: false,
        overlay: None,
        paste: None,
    });
    assert_eq!(
        b64(out["data"][0]["b64_json"].as_str().unwrap()),
        expected_pngs(&want)[0]
    );

    // Refusals name the part.
    let small_mask = rgba_mask(32, 32);
    let bad: [(&[Part], u16, &str); 5] = [
        (&[("prompt", None, b"x")], 422, "image"),
        (&[("image", Some("i.png"), &image_png)], 422, "prompt"),
        (
            &[
                ("image", Some("i.png"), &image_png),
                ("mask", Some("m.png"), &small_mask),
                ("prompt", None, b"x"),
            ],
            422,
            "mask",
        ),
        (
            &[
                ("image", Some("i.png"), &image_png),
                ("prompt", None, b"x"),
                ("background", None, b"transparent"),
            ],
            400,
            "background",
        ),
        (
            &[
                ("image", Some("i.png"), &image_png),
                ("prompt", None, b"x"),
                ("style", None, b"vivid"),
            ],
            422,
            "style",
        ),
    ];
    for (parts, status, needle) in bad {
        let (content_type, body) = multipart(parts);
        let resp = client
            .post(s.url("/v1/images/edits"))
            .header("content-type", &content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(resp, status, needle).await;
    }
    let resp = client
        .post(s.url("/v1/images/edits"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "multipart").await;
}
