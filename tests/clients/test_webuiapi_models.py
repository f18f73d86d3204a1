"""The `webuiapi` package switching between the models of one sdserve (started
with --models-dir): `util_set_model` (POST /sdapi/v1/options) and per-request
`override_settings`, in an order that makes the server load, unload and reload
models. Every answer must be the image `sdserve generate` wrote for that model
with the same settings (within 3/255 per channel) and carry its infotext.

Usage: python test_webuiapi_models.py --port PORT --case NAME=REF.png [--case ...]
    --seed N --steps N --cfg-scale F --sampler S --size N --prompt P
Exits non-zero on the first failed check. Driven by crates/sdserve/tests/clients.rs.
"""

import argparse
import sys
import time

import webuiapi
from PIL import Image

MAX_DIFF = 3


def max_diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    return max(abs(x - y) for x, y in zip(a.convert("RGB").tobytes(), b.convert("RGB").tobytes()))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--case", action="append", required=True, help="model name=reference PNG")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cfg-scale", type=float, required=True)
    p.add_argument("--sampler", required=True)
    p.add_argument("--size", type=int, required=True)
    args = p.parse_args()
    refs = {}
    for case in args.case:
        name, path = case.split("=", 1)
        refs[name] = Image.open(path)

    api = webuiapi.WebUIApi(host=args.host, port=args.port, sampler=args.sampler, steps=args.steps)

    # Titles carry the short hash once the server has hashed the files.
    deadline = time.time() + 60
    while True:
        models = api.get_sd_models()
        if all(m["sha256"] for m in models) or time.time() > deadline:
            break
        time.sleep(0.1)
    titles = {}
    for m in models:
        # A1111: the title is the file's name below the folder (a single file keeps its
        # extension, model_name drops it) and the short hash.
        assert m["title"].startswith(m["model_name"]) and m["title"].endswith(f' [{m["sha256"][:10]}]'), m
        assert m["hash"] == m["sha256"][:10], m
        titles[m["model_name"]] = m["title"]
    assert sorted(titles) == sorted(refs), (titles, refs)

    def generate(**extra):
        result = api.txt2img(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            sampler_name=args.sampler,
            width=args.size,
            height=args.size,
            **extra,
        )
        assert len(result.images) == 1, result.images
        return result

    def check(result, name: str, how: str):
        ref = refs[name]
        diff = max_diff(result.image, ref)
        assert diff <= MAX_DIFF, f"{how}: {name}: max difference {diff}/255 from sdserve generate"
        assert result.info["infotexts"][0] == ref.info["parameters"], (how, result.info["infotexts"][0], ref.info["parameters"])
        assert result.info["sd_model_name"] == name, (how, result.info["sd_model_name"])
        assert result.info["sd_model_hash"] == titles[name][-11:-1], (how, result.info["sd_model_hash"])
        print(f"{how}: {name}: max difference {diff}/255")

    names = sorted(refs)
    # Switch the default through the options, as the A1111 UI does.
    for name in names + names[:1]:
        api.util_set_model(titles[name])
        assert api.util_get_current_model() == titles[name], (api.util_get_current_model(), titles[name])
        check(generate(), name, "util_set_model")

    # Per request: the default stays what it was.
    default = names[0]
    api.util_set_model(titles[default])
    for name in [names[1], names[2], names[0], names[2], names[1]]:
        result = generate(override_settings={"sd_model_checkpoint": titles[name]})
        check(result, name, "override_settings")
        assert api.util_get_current_model() == titles[default]
    # And by model_name rather than title.
    check(generate(override_settings={"sd_model_checkpoint": names[2]}), names[2], "override by name")
    print("webuiapi models: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
