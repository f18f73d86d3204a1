"""Image-to-image through real clients against a running sdserve, each result
checked byte for byte against what `sdserve generate` wrote for the same
settings:

* `webuiapi.img2img` without a mask: the CLI's `--init-image --strength` image;
* `webuiapi.img2img` with a mask (mask_blur 0): the CLI's `--mask` image, with
  A1111's overlay put back (the original where the mask is off, the CLI's
  pixels where it is fully on, blended in between with alpha min(2 m, 255));
* a webuiapi txt2img batch of 2: image i is the CLI's image for seed + i, and
  `all_seeds` lists both (A1111's batch seeds);
* the `openai` package's `images.edit` with a mask whose transparent pixels
  mark the edit: the CLI's `--mask` image for the same (white = transparent) mask.

Usage: python test_img2img.py --port PORT --init INIT.png --mask MASK.png
       --ref-img2img A.png --ref-inpaint B.png --ref-batch1 C.png --ref-edit D.png
       --seed N --steps N --strength F --prompt TEXT --sampler NAME
Driven by crates/sdserve/tests/clients.rs.
"""

import argparse
import base64
import io
import sys

import openai
import webuiapi
from PIL import Image


def rgb_bytes(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def overlay(generated: Image.Image, original: Image.Image, mask: Image.Image) -> bytes:
    """A1111's apply_overlay, in the integer rounding sdserve documents."""
    gen, orig = rgb_bytes(generated), rgb_bytes(original)
    m = mask.convert("L").tobytes()
    out = bytearray(len(gen))
    for i in range(len(gen)):
        keep = 255 - min(2 * m[i // 3], 255)
        out[i] = (orig[i] * keep + gen[i] * (255 - keep) + 127) // 255
    return bytes(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--ref-img2img", required=True)
    p.add_argument("--ref-inpaint", required=True)
    p.add_argument("--ref-batch1", required=True)
    p.add_argument("--ref-edit", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--strength", type=float, required=True)
    p.add_argument("--cfg-scale", type=float, required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--sampler", required=True)
    args = p.parse_args()

    init = Image.open(args.init)
    mask = Image.open(args.mask)
    api = webuiapi.WebUIApi(host="127.0.0.1", port=args.port, sampler=args.sampler, steps=args.steps)
    common = dict(
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        sampler_name=args.sampler,
        width=init.width,
        height=init.height,
    )

    plain = api.img2img(images=[init], denoising_strength=args.strength, **common)
    assert len(plain.images) == 1, plain.images
    ref = Image.open(args.ref_img2img)
    assert plain.image.size == ref.size, (plain.image.size, ref.size)
    assert rgb_bytes(plain.image) == rgb_bytes(ref), "img2img pixels differ from sdserve generate"
    assert plain.info["all_seeds"] == [args.seed], plain.info
    assert plain.info["denoising_strength"] == args.strength, plain.info
    assert "Denoising strength: " in plain.info["infotexts"][0], plain.info["infotexts"]

    masked = api.img2img(
        images=[init],
        mask_image=mask,
        mask_blur=0,
        inpainting_fill=1,
        inpaint_full_res=False,
        denoising_strength=1.0,
        **common,
    )
    ref = Image.open(args.ref_inpaint)
    want = overlay(ref, init, mask)
    assert rgb_bytes(masked.image) == want, "inpainting differs from the CLI's image with A1111's overlay"
    assert masked.info["is_using_inpainting_conditioning"] is True, masked.info

    # "Inpaint only masked" at half the size: the answer is the init image's
    # size, its pixels the init image's wherever the (unblurred) mask is 0.
    only = api.img2img(
        images=[init],
        mask_image=mask,
        mask_blur=0,
        inpainting_fill=1,
        inpaint_full_res=True,
        inpaint_full_res_padding=4,
        denoising_strength=1.0,
        **dict(common, width=init.width // 2 // 8 * 8, height=init.height // 2 // 8 * 8),
    )
    assert only.image.size == init.size, (only.image.size, init.size)
    keep = [m == 0 for m in mask.convert("L").getdata()]
    got, orig = list(only.image.convert("RGB").getdata()), list(init.convert("RGB").getdata())
    assert all(g == o for g, o, k in zip(got, orig, keep) if k), "only-masked changed pixels outside the mask"
    assert any(g != o for g, o, k in zip(got, orig, keep) if not k), "only-masked changed nothing"
    assert "Inpaint area: Only masked, Masked area padding: 4" in only.info["infotexts"][0], only.info

    # A1111's batches: image i is seed + i, reproducible alone.
    batch = api.txt2img(
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        sampler_name=args.sampler,
        batch_size=2,
        width=init.width,
        height=init.height,
    )
    assert batch.info["all_seeds"] == [args.seed, args.seed + 1], batch.info
    assert rgb_bytes(batch.images[1]) == rgb_bytes(Image.open(args.ref_batch1)), "batch image 1 is not seed + 1's image"
    assert f"Seed: {args.seed + 1}," in batch.info["infotexts"][1], batch.info["infotexts"]

    # OpenAI: transparent pixels of the mask are edited.
    alpha = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)
    openai_mask = Image.new("RGBA", mask.size, (0, 0, 0, 255))
    openai_mask.putalpha(alpha)
    image_png, mask_png = io.BytesIO(), io.BytesIO()
    init.convert("RGB").save(image_png, format="PNG")
    openai_mask.save(mask_png, format="PNG")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="x", max_retries=0)
    edit = client.images.edit(
        image=("init.png", image_png.getvalue(), "image/png"),
        mask=("mask.png", mask_png.getvalue(), "image/png"),
        prompt=args.prompt,
        n=1,
        size=f"{init.width}x{init.height}",
        response_format="b64_json",
        extra_body={
            "seed": args.seed,
            "steps": args.steps,
            "cfg_scale": args.cfg_scale,
            "sampler": args.sampler,
        },
    )
    got = Image.open(io.BytesIO(base64.b64decode(edit.data[0].b64_json)))
    assert rgb_bytes(got) == rgb_bytes(Image.open(args.ref_edit)), "images.edit differs from sdserve generate --mask"

    # What OpenAI's edits cannot honour is refused by name.
    try:
        client.images.edit(
            image=("init.png", image_png.getvalue(), "image/png"),
            prompt=args.prompt,
            extra_body={"background": "transparent"},
        )
        raise AssertionError("background=transparent was accepted")
    except openai.BadRequestError as e:
        assert "background" in str(e), e
    print("img2img clients: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
