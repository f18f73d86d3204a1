"""The official `openai` package against a running sdserve: images.generate
must return the image `sdserve generate` wrote for the same settings (sdserve's
extension fields go through `extra_body`), and errors must surface as the SDK's
typed exceptions.

Usage: python test_openai.py --base-url http://127.0.0.1:PORT --reference REF.png ...
Exits non-zero on the first failed check. Driven by crates/sdserve/tests/clients.rs.
"""

import argparse
import base64
import io
import sys
import urllib.request

import openai
from PIL import Image


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--reference", required=True, help="PNG written by sdserve generate")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--cfg-scale", type=float, required=True)
    p.add_argument("--sampler", required=True)
    p.add_argument("--size", type=int, required=True)
    args = p.parse_args()

    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key="not-needed", max_retries=0)
    models = client.models.list()
    model = models.data[0].id

    result = client.images.generate(
        model=model,
        prompt=args.prompt,
        n=1,
        size=f"{args.size}x{args.size}",
        response_format="b64_json",
        extra_body={
            "negative_prompt": args.negative_prompt,
            "seed": args.seed,
            "steps": args.steps,
            "cfg_scale": args.cfg_scale,
            "sampler": args.sampler,
        },
    )
    assert result.created > 0
    assert len(result.data) == 1
    got = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    reference = Image.open(args.reference)
    assert got.size == reference.size, (got.size, reference.size)
    assert got.convert("RGB").tobytes() == reference.convert("RGB").tobytes(), "pixels differ from sdserve generate"
    assert got.info.get("parameters") == reference.info["parameters"]

    # response_format=url gives a fetchable PNG.
    by_url = client.images.generate(
        model=model, prompt=args.prompt, n=2, size=f"{args.size}x{args.size}", response_format="url",
        extra_body={"steps": 1},
    )
    assert len(by_url.data) == 2
    with urllib.request.urlopen(by_url.data[0].url) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.read().startswith(b"\x89PNG")

    # OpenAI's model names run on the default model; output_format re-encodes.
    for name in ["dall-e-2", "dall-e-3", "gpt-image-1"]:
        same = client.images.generate(
            model=name, prompt=args.prompt, n=1, size=f"{args.size}x{args.size}", response_format="b64_json",
            extra_body={"negative_prompt": args.negative_prompt, "seed": args.seed, "steps": args.steps,
                        "cfg_scale": args.cfg_scale, "sampler": args.sampler},
        )
        assert base64.b64decode(same.data[0].b64_json) == base64.b64decode(result.data[0].b64_json), name
    for fmt, magic in [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")]:
        encoded = client.images.generate(
            model=model, prompt=args.prompt, n=1, size=f"{args.size}x{args.size}", response_format="b64_json",
            output_format=fmt, output_compression=80 if fmt == "jpeg" else 100, extra_body={"steps": 1},
        )
        data = base64.b64decode(encoded.data[0].b64_json)
        assert data.startswith(magic), (fmt, data[:12])
        assert Image.open(io.BytesIO(data)).size == (args.size, args.size)

    # Errors arrive as the SDK's typed exceptions with OpenAI's error shape;
    # an unknown model is a 404 (`model_not_found`), as OpenAI answers, and
    # what sdserve cannot honour is a 400 naming the field.
    for bad, param, error in [
        ({"size": "banana"}, "size", openai.UnprocessableEntityError),
        ({"model": "dall-e-4"}, "model", openai.NotFoundError),
        ({"background": "transparent"}, "background", openai.BadRequestError),
        ({"extra_body": {"stream": True}}, "stream", openai.BadRequestError),
    ]:
        kwargs = {"model": model, "prompt": "x", "size": f"{args.size}x{args.size}"}
        kwargs.update(bad)
        try:
            client.images.generate(**kwargs)
        except error as e:
            assert e.status_code in (400, 404, 422), e.status_code
            assert e.body["param"] == param, e.body
            assert e.body["type"] == "invalid_request_error", e.body
        else:
            raise AssertionError(f"{bad} was accepted")
    print("openai: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
