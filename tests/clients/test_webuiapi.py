"""The `webuiapi` package (an AUTOMATIC1111 client nobody here wrote) against a
running sdserve: txt2img must return the image `sdserve generate` wrote for the
same settings, and the discovery calls A1111 scripts rely on must work.

Usage: python test_webuiapi.py --port PORT --reference REF.png [--seed N ...]
Exits non-zero on the first failed check. Driven by crates/sdserve/tests/clients.rs.
"""

import argparse
import sys

import webuiapi
from PIL import Image


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reference", required=True, help="PNG written by sdserve generate")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cfg-scale", type=float, required=True)
    p.add_argument("--sampler", required=True)
    p.add_argument("--size", type=int, required=True)
    args = p.parse_args()

    api = webuiapi.WebUIApi(host=args.host, port=args.port, sampler=args.sampler, steps=args.steps)

    models = api.util_get_model_names()
    assert models, "no models listed"
    api.util_set_model(models[0])
    assert api.util_get_current_model() == models[0]
    samplers = api.util_get_sampler_names()
    assert args.sampler in samplers, samplers
    api.util_wait_for_ready(check_interval=0.1)

    result = api.txt2img(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        sampler_name=args.sampler,
        width=args.size,
        height=args.size,
    )
    assert len(result.images) == 1, result.images
    reference = Image.open(args.reference)
    got = result.image.convert("RGB")
    assert got.size == reference.size, (got.size, reference.size)
    assert got.tobytes() == reference.convert("RGB").tobytes(), "pixels differ from sdserve generate"
    assert result.info["all_seeds"] == [args.seed], result.info
    assert result.info["seed"] == args.seed
    assert result.info["infotexts"][0] == reference.info["parameters"], (
        result.info["infotexts"][0],
        reference.info["parameters"],
    )
    assert result.parameters["prompt"] == args.prompt

    # A random seed is reported back, and batches return every image.
    batch = api.txt2img(prompt=args.prompt, seed=-1, batch_size=2, steps=1, width=args.size, height=args.size)
    assert len(batch.images) == 2
    assert len(batch.info["all_seeds"]) == 2 and batch.info["all_seeds"][0] >= 0

    # Other calls clients make.
    progress = api.get_progress()
    assert 0.0 <= progress["progress"] <= 1.0 and "state" in progress
    assert api.interrupt() is not None
    api.skip()
    info = api.png_info(result.image)
    assert "info" in info.info or isinstance(info.info, str)
    assert isinstance(api.get_options(), dict)
    print("webuiapi: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
