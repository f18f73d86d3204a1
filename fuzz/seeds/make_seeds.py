"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/.

Run from fuzz/ with Pillow installed: `python seeds/make_seeds.py`. Seeds are
small valid inputs; libFuzzer mutates them (and `cargo fuzz cmin` keeps only
the ones that add coverage).
"""
import io, json, os, struct, zlib
from PIL import Image, PngImagePlugin

def out(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

# image_input: one PNG of each colour type, text chunks of each kind, JPEGs.
def png(mode, size=(5, 3), **text):
    im = Image.new(mode, size)
    for i in range(size[0] * size[1]):
        if mode in ("1", "L", "P", "I;16"):
            value = (i * 37 * (200 if mode == "I;16" else 1)) % (65536 if mode == "I;16" else 256)
        else:
            value = tuple((i * k) % 256 for k in (37, 91, 13, 200)[: len(mode)])
        im.putpixel((i % size[0], i // size[0]), value)
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        kind = k.split("_")[0]
        if kind == "z":
            info.add_text(k[2:], v, zip=True)
        elif kind == "i":
            info.add_itxt(k[2:], v, zip=True)
        else:
            info.add_text(k[2:], v)
    b = io.BytesIO()
    im.save(b, "PNG", pnginfo=info)
    return b.getvalue()

params = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
for mode in ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]:
    out("image_input", "png-" + mode.replace(";", ""), png(mode))
out("image_input", "png-text", png("RGB", t_parameters=params, t_Software="sdserve"))
out("image_input", "png-ztxt", png("RGB", z_parameters=params))
out("image_input", "png-itxt", png("RGB", i_parameters="日本語 " + params))
for mode, kw in [("RGB", {}), ("RGB", {"progressive": True}), ("L", {})]:
    b = io.BytesIO()
    Image.new(mode, (16, 8), (200, 40, 30) if mode == "RGB" else 99).save(b, "JPEG", quality=90, **kw)
    out("image_input", "jpeg-" + mode + ("-prog" if kw else ""), b.getvalue())

# safetensors_header: small valid files and the usual dtypes.
def st(tensors, meta=None):
    header, data = {}, b""
    if meta:
        header["__metadata__"] = meta
    for name, (dtype, shape, size) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n * size]}
        data += bytes(n * size)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data

out("safetensors_header", "f32", st({"w": ("F32", [2, 2], 4)}))
out("safetensors_header", "mixed", st({"a": ("F16", [3], 2), "b": ("BF16", [1, 2], 2), "text_model.embeddings.position_ids": ("I64", [1, 4], 8)}, {"format": "pt"}))
out("safetensors_header", "empty", st({}))

# request_json: selector byte (0 native, 1 a1111, 2 openai, 3 simple, 4 png-info) + body.
bodies = [
    (0, {"prompt": "a cat", "negative_prompt": "dog", "seed": 1, "steps": 4, "cfg_scale": 7.5, "sampler": "euler", "width": 64, "height": 64, "batch_size": 2}),
    (1, {"prompt": "a cat", "seed": -1, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 4, "cfg_scale": 5, "width": 64, "height": 64, "batch_size": 1, "n_iter": 2}),
    (2, {"prompt": "a cat", "model": "fake-sd", "n": 1, "size": "64x64", "response_format": "b64_json", "steps": 3}),
    (3, {"prompt": "a cat", "scale": 7, "steps": 2, "seed": 3}),
]
for sel, body in bodies:
    out("request_json", "dialect-%d" % sel, bytes([sel]) + json.dumps(body, ensure_ascii=False).encode())
import base64
out("request_json", "dialect-4", bytes([4]) + json.dumps({"image": "data:image/png;base64," + base64.b64encode(png("RGB", t_parameters=params)).decode()}).encode())
