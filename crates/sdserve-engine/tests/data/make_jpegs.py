"""Makes the tiny JPEGs the engine's image_input tests decode.

Run with Pillow 13.0.0 (`pip install pillow`): `python make_jpegs.py`.
Each image is 16x8: the left 8x8 block one colour, the right another, so every
JPEG block is flat and any decoder gives the colours back within a few levels.
"""
from PIL import Image

LEFT, RIGHT = (200, 40, 30), (20, 60, 220)


def two_blocks(mode, left, right):
    im = Image.new(mode, (16, 8), left)
    im.paste(right, (8, 0, 16, 8))
    return im


two_blocks("RGB", LEFT, RIGHT).save("rgb_baseline.jpg", quality=95, subsampling=0)
two_blocks("RGB", LEFT, RIGHT).save(
    "rgb_progressive_420.jpg", quality=95, subsampling=2, progressive=True
)
two_blocks("L", 30, 220).save("gray.jpg", quality=95)
