"""The `webuiapi` package (an AUTOMATIC1111 client nobody here wrote) against a
running sdserve: txt2img must return the image `sdserve generate` wrote for the
same settings, and the discovery calls A1111 scripts rely on must work.

Usage: python test_webuiapi.py --port PORT --reference REF.png [--seed N ...]
Exits non-zero on the first failed check. Driven by crates/sdserve/tests/clients.rs.
"""

import argparse
import sys

import requests
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
    p.add_argument("--scheduler", default=None, help="A1111 schedule type (webuiapi's scheduler=)")
    p.add_argument("--only-txt2img", action="store_true", help="check the one image, skip the rest")
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
        **({"scheduler": args.scheduler} if args.scheduler else {}),
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
    if args.only_txt2img:
        print("webuiapi: txt2img equals sdserve generate")
        return 0

    # A random seed is reported back, and batches return every image.
    batch = api.txt2img(prompt=args.prompt, seed=-1, batch_size=2, steps=1, width=args.size, height=args.size)
    assert len(batch.images) == 2
    assert len(batch.info["all_seeds"]) == 2 and batch.info["all_seeds"][0] >= 0

    # The hires fix as webuiapi sends it (every hr_* field, "same" overrides as None/"").
    hires = api.txt2img(prompt=args.prompt, seed=args.seed, steps=2, width=args.size, height=args.size,
                        enable_hr=True, hr_scale=1.5, hr_upscaler=webuiapi.HiResUpscaler.Lanczos,
                        hr_second_pass_steps=1, denoising_strength=0.5)
    target = int(args.size * 1.5) // 8 * 8
    assert hires.image.size == (target, target), hires.image.size
    assert hires.info["extra_generation_params"] == {
        "Hires upscale": 1.5, "Hires steps": 1, "Hires upscaler": "Lanczos"}, hires.info
    assert "Hires upscaler: Lanczos" in hires.info["infotexts"][0]
    try:
        api.txt2img(prompt=args.prompt, steps=1, width=args.size, height=args.size, enable_hr=True,
                    hr_upscaler=webuiapi.HiResUpscaler.ESRGAN_4x)
        raise AssertionError("an upscaler sdserve lacks must be refused")
    except RuntimeError as e:
        assert "hr_upscaler" in str(e), e

    # Other calls clients make.
    progress = api.get_progress()
    assert 0.0 <= progress["progress"] <= 1.0 and "state" in progress
    assert api.interrupt() is not None
    api.skip()
    info = api.png_info(result.image)
    assert "info" in info.info or isinstance(info.info, str)
    options = api.get_options()
    assert isinstance(options, dict)
    for key, value in [("sd_vae", "Automatic"), ("CLIP_stop_at_last_layers", 1), ("samples_format", "png")]:
        assert options[key] == value, (key, options)

    # Discovery helpers answer A1111's types (empty lists where sdserve has none).
    for helper in [api.get_loras, api.get_sd_vae, api.get_hypernetworks, api.get_face_restorers,
                   api.get_realesrgan_models, api.get_prompt_styles]:
        assert helper() == [], helper.__name__
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert all(set(u) == {"name", "model_name", "model_path", "model_url", "scale"} for u in api.get_upscalers())
    assert [m["name"] for m in api.get_latent_upscale_modes()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (nearest)", "Latent (nearest-exact)"]
    assert api.get_cmd_flags()["api"] is True
    assert "karras" in api.util_get_scheduler_names()
    assert api.refresh_checkpoints() is None

    # A1111 1.9+ infotext: the schedule is its own key, and png-info reads it back.
    karras = api.txt2img(prompt=args.prompt, seed=1, steps=2, sampler_name="DPM++ 2M", scheduler="Karras",
                         width=args.size, height=args.size)
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in karras.info["infotexts"][0], karras.info
    parsed = api.png_info(karras.image).parameters
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras"), parsed

    # Multi-client tracking (A1111 1.8+): the client names its task and asks about it.
    base = f"http://{args.host}:{args.port}"
    done = requests.post(f"{base}/sdapi/v1/txt2img", json={
        "prompt": args.prompt, "steps": 1, "width": args.size, "height": args.size, "force_task_id": "task(webuiapi)",
    }, timeout=600)
    assert done.status_code == 200, done.text
    state = requests.post(f"{base}/internal/progress", json={"id_task": "task(webuiapi)", "id_live_preview": -1},
                          timeout=60).json()
    assert state["completed"] is True and state["active"] is False, state
    assert requests.get(f"{base}/internal/pending-tasks", timeout=60).json() == {"size": 0, "tasks": []}
    print("webuiapi: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
