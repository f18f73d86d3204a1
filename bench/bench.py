#!/usr/bin/env python3
"""End-to-end CPU benchmark: diffusers vs `sdserve generate` on an SD 1.5 or SDXL shaped model.

    python bench/bench.py                       # build the model if needed, then benchmark
    python bench/bench.py --sizes 256x256 --steps 1 --runs 1 --skip-sdserve   # quick trial
    python bench/bench.py build                 # only build the random-weight model
    python bench/bench.py --mode best           # each tool's fastest CPU mode
    python bench/bench.py --family sdxl --sizes 1024x1024 --steps 1 --runs 1

The SD 1.5 model has the real SD 1.5 shapes (UNet 860M, CLIP ViT-L/14 text
encoder 123M, SD VAE 84M parameters) but random weights, saved as fp32
safetensors in diffusers layout under the cache dir. The SDXL model has SDXL
base's shapes (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG text encoders 817M, VAE
84M) with random weights saved in fp16 (disk); both tools run it in fp32.  Every timed run is a fresh process
(python for diffusers, the sdserve binary for sdserve) so the time includes
start-up and model loading, and the peak RSS is that process's own
(`ru_maxrss` from `os.wait4`).  This parent process never imports torch, so it
stays small and cannot inflate the children's numbers.

`--mode best` times each tool's fastest CPU mode instead of f32: diffusers under
`torch.autocast("cpu", dtype=torch.bfloat16)`, sdserve with `--dtype bf16` where
the CPU has AMX, else `--dtype f32` (its fastest there; see sdserve_best_dtype).

Results go to stdout as markdown; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHES = {"sd15": HERE / ".cache" / "sd15-random", "sdxl": HERE / ".cache" / "sdxl-random"}
FIXTURE_TOKENIZER = REPO / "fixtures" / "models" / "tiny-sd1" / "tokenizer"
# Pads with "!" as SDXL's second tokenizer does.
FIXTURE_TOKENIZER_2 = REPO / "fixtures" / "models" / "tiny-sdxl" / "tokenizer_2"
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
CFG_SCALE = 7.0
SAMPLER = "Euler a"
MODES = ("f32", "best")
SEED = 1
BUILD_MARKER = "bench_build.json"

# --- SD 1.5 component configs (shapes only; weights are random) -------------

SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)

CLIP_VIT_L14_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

SD_VAE = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

# --- SDXL base component configs (shapes only) --------------------------------

SDXL_UNET = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    in_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)

OPENCLIP_BIGG_TEXT = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1280,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


# --- build ------------------------------------------------------------------


def build(cache: Path, family: str, seed: int = 0) -> None:
    """Create the random-weight model (runs in its own process)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sdxl = family == "sdxl"
    for tok in [FIXTURE_TOKENIZER] + ([FIXTURE_TOKENIZER_2] if sdxl else []):
        if not tok.is_dir():
            sys.exit(f"missing {tok}: run the fixture scripts first")
    tmp = cache.with_name(cache.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    counts = {}
    t0 = time.perf_counter()

    def save(name: str, module) -> None:
        counts[name] = sum(p.numel() for p in module.parameters())
        # SDXL's 3.5B parameters are stored in fp16 (7 GB instead of 14); both tools widen them to fp32.
        (module.half() if sdxl else module).save_pretrained(tmp / name)
        log(f"{name}: {counts[name] / 1e6:.1f}M params")

    torch.manual_seed(seed)
    save("text_encoder", CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L14_TEXT)).eval())
    if sdxl:
        torch.manual_seed(seed + 3)
        save("text_encoder_2", CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG_TEXT)).eval())
    torch.manual_seed(seed + 1)
    save("unet", UNet2DConditionModel(**(SDXL_UNET if sdxl else SD15_UNET)).eval())
    torch.manual_seed(seed + 2)
    save("vae", AutoencoderKL(**(SDXL_VAE if sdxl else SD_VAE)).eval())

    shutil.copytree(FIXTURE_TOKENIZER, tmp / "tokenizer")
    scheduler = SDXL_SCHEDULER if sdxl else SD15_SCHEDULER
    write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.6.0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        shutil.copytree(FIXTURE_TOKENIZER_2, tmp / "tokenizer_2")
        for key in ("feature_extractor", "requires_safety_checker", "safety_checker"):
            del index[key]
        index.update(
            _class_name="StableDiffusionXLPipeline",
            force_zeros_for_empty_prompt=True,
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
        )
    write_json(tmp / "model_index.json", index)
    write_json(
        tmp / BUILD_MARKER,
        {"family": family, "param_counts": counts, "seed": seed, "build_s": time.perf_counter() - t0},
    )
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)
    log(f"built {cache} in {time.perf_counter() - t0:.0f}s")


def build_tiny_vae(folder: Path) -> None:
    """A random TAESD-shaped decoder (diffusers' AutoencoderTiny defaults: 64
    channels, as madebyollin/taesd and taesdxl) for `--fast-decode`."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(5)
    AutoencoderTiny().eval().save_pretrained(folder)
    log(f"built {folder}")


def ensure_tiny_vae(cache: Path) -> Path:
    folder = cache.parent / "taesd-random"
    if not (folder / "config.json").exists():
        cmd = [sys.executable, __file__, "--cache", str(folder), "build-tiny-vae"]
        subprocess.run(cmd, check=True)
    return folder


def ensure_model(cache: Path, family: str, rebuild: bool) -> dict:
    if rebuild or not (cache / BUILD_MARKER).exists():
        log(f"building {family} shaped random model in {cache} (a few GB)...")
        cmd = [sys.executable, __file__, "--family", family, "--cache", str(cache), "build"]
        subprocess.run(cmd, check=True)
    return json.loads((cache / BUILD_MARKER).read_text())


# --- one diffusers generation (child process) --------------------------------


def diffusers_child(args) -> None:
    t0 = time.perf_counter()
    import torch
    from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler

    t_import = time.perf_counter()
    # The class comes from model_index.json (StableDiffusionPipeline or StableDiffusionXLPipeline).
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    if args.fast_decode:
        from diffusers import AutoencoderTiny

        pipe.vae = AutoencoderTiny.from_pretrained(args.fast_decode, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if args.step_cache:
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=args.step_cache, cache_branch_id=0)
        helper.enable()
    t_load = time.perf_counter()
    # Best mode: autocast runs matmuls and convolutions in bf16 (oneDNN's
    # AVX512-BF16/AMX kernels where the CPU has them), the rest in f32.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mode == "best")
    with autocast:
        image = pipe(
            prompt=args.prompt,
            num_inference_steps=args.steps,
            guidance_scale=CFG_SCALE,
            width=args.width,
            height=args.height,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    image.save(args.output)
    t_gen = time.perf_counter()
    print(
        "BENCH_JSON "
        + json.dumps(
            {
                "import_s": t_import - t0,
                "load_s": t_load - t_import,
                "generate_s": t_gen - t_load,
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "diffusers": __import__("diffusers").__version__,
            }
        ),
        flush=True,
    )


# --- timing harness -----------------------------------------------------------


def thread_env(threads: int | None) -> dict[str, str]:
    """The environment that runs both tools on `threads` threads (None: their defaults).

    torch takes its intra-op thread count from OMP_NUM_THREADS at import;
    sdserve's pool (and candle's and the gemm crate's) from RAYON_NUM_THREADS.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["RAYON_NUM_THREADS"] = str(threads)
    return env


def parse_threads(text: str) -> list[int | None]:
    if not text:
        return [None]
    counts = [int(part) for part in text.split(",")]
    if any(n < 1 for n in counts):
        raise SystemExit(f"--threads: counts must be at least 1, got {text!r}")
    return counts


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run cmd as a fresh process; wall seconds and that process's peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        log(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}")
        raise SystemExit(1)
    # Linux reports ru_maxrss in KiB.
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


def diffusers_cmd(model: Path, prompt: str, steps: int, w: int, h: int, output: Path, mode: str,
                  fast_decode: Path | None, step_cache: int) -> list[str]:
    return [
        sys.executable, __file__, "_diffusers", "--mode", mode,
        "--model", str(model), "--prompt", prompt, "--steps", str(steps),
        "--width", str(w), "--height", str(h), "--output", str(output),
    ] + (["--fast-decode", str(fast_decode)] if fast_decode else []) + (
        ["--step-cache", str(step_cache)] if step_cache else [])  # fmt: skip


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def sdserve_best_dtype() -> str:
    """sdserve's fastest CPU mode: bf16 where the CPU has AMX tiles (and
    SDSERVE_NO_AMX is unset), else f32. With AVX512-BF16 alone, bf16 measured
    1.7x slower than f32 at 512x512 (bench/README.md, session 11); without
    either, bf16 runs generic half-precision ops, slower still."""
    amx = "amx_bf16" in cpu_flags() and not os.environ.get("SDSERVE_NO_AMX")
    return "bf16" if amx else "f32"


def sdserve_cmd(binary: Path, model: Path, prompt: str, steps: int, w: int, h: int, output: Path, mode: str,
                fast_decode: Path | None, step_cache: int) -> list[str]:
    return [
        str(binary), "generate", "--dtype", sdserve_best_dtype() if mode == "best" else "f32",
        "--model", str(model), "--prompt", prompt, "--steps", str(steps),
        "--cfg-scale", str(CFG_SCALE), "--sampler", SAMPLER,
        "--width", str(w), "--height", str(h), "--seed", str(SEED), "--output", str(output),
    ] + (["--tiny-vae", str(fast_decode), "--fast-decode"] if fast_decode else []) + (
        ["--step-cache", str(step_cache)] if step_cache else [])  # fmt: skip


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, h = part.lower().split("x")
        sizes.append((int(w), int(h)))
    return sizes


def summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }


def diffusers_detail(runs: list[dict]) -> str:
    parts = []
    for r in runs:
        for line in r["stdout"].splitlines():
            if line.startswith("BENCH_JSON "):
                parts.append(json.loads(line[len("BENCH_JSON ") :]))
    if not parts:
        return ""
    med = lambda k: statistics.median(p[k] for p in parts)  # noqa: E731
    return f"import {med('import_s'):.1f}s, load {med('load_s'):.1f}s, generate {med('generate_s'):.1f}s"


def sdserve_detail(runs: list[dict]) -> str:
    for line in reversed(runs[-1]["stderr"].splitlines()):
        if "timings:" in line:
            return line[line.index("timings:") + len("timings:") :].strip()
    return ""


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores{mem}", f"OS: {platform.platform()}"]
    # The flags that pick each tool's kernels (bf16: vdpbf16ps, or AMX tiles
    # unless SDSERVE_NO_AMX is set).
    wanted = ["fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_tile"]
    present = cpu_flags()
    if present:
        have = " ".join(f for f in wanted if f in present) or "none of " + " ".join(wanted)
        no_amx = " (SDSERVE_NO_AMX set)" if os.environ.get("SDSERVE_NO_AMX") else ""
        lines.append(f"CPU flags: {have}{no_amx}")
    return lines


def bench(args) -> None:
    cache = Path(args.cache).resolve()
    build_info = ensure_model(cache, args.family, args.rebuild)
    tiny = ensure_tiny_vae(cache) if args.fast_decode else None
    binary = Path(args.sdserve)
    if not binary.is_absolute():
        binary = (REPO / binary).resolve()
    do_sdserve = not args.skip_sdserve
    if do_sdserve and not binary.exists():
        log(f"sdserve binary {binary} not found: skipping sdserve (build it with cargo build --release)")
        do_sdserve = False
    sizes = parse_sizes(args.sizes)

    thread_counts = parse_threads(args.threads)
    results = {}
    details = {}
    env_info = {}
    with tempfile.TemporaryDirectory(prefix="sdserve-bench-") as tmp:
        tmpd = Path(tmp)
        for w, h in sizes:
            for threads in thread_counts:
                for tool in ("diffusers", "sdserve"):
                    if tool == "diffusers" and args.skip_diffusers:
                        continue
                    if tool == "sdserve" and not do_sdserve:
                        continue
                    label = f"{tool} {w}x{h}" + (f" {threads} threads" if threads else "")
                    runs = []
                    for i in range(args.runs):
                        out = tmpd / f"{tool}-{w}x{h}-{threads}-{i}.png"
                        cmd = (
                            diffusers_cmd(cache, args.prompt, args.steps, w, h, out, args.mode, tiny, args.step_cache)
                            if tool == "diffusers"
                            else sdserve_cmd(binary, cache, args.prompt, args.steps, w, h, out, args.mode, tiny,
                                             args.step_cache)
                        )
                        log(f"[{label} run {i + 1}/{args.runs}] ...")
                        r = run_timed(cmd, thread_env(threads))
                        if not out.exists():
                            log(f"{tool} produced no image at {out}")
                            raise SystemExit(1)
                        log(f"[{label} run {i + 1}/{args.runs}] {r['wall_s']:.1f}s, peak RSS {r['peak_rss_mib']:.0f} MiB")
                        runs.append(r)
                    key = (w, h, threads, tool)
                    results[key] = summarize(runs)
                    details[key] = diffusers_detail(runs) if tool == "diffusers" else sdserve_detail(runs)
                    if tool == "diffusers":
                        for line in runs[0]["stdout"].splitlines():
                            if line.startswith("BENCH_JSON "):
                                env_info = json.loads(line[len("BENCH_JSON ") :])
        sdserve_version = ""
        if do_sdserve:
            try:
                sdserve_version = subprocess.run(
                    [str(binary), "--version"], capture_output=True, text=True, timeout=30
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass

    # --- report (markdown on stdout) ---
    p = build_info["param_counts"]
    shape = "SDXL base" if args.family == "sdxl" else "SD 1.5"
    stored = "fp16 safetensors run in fp32" if args.family == "sdxl" else "fp32 safetensors"
    modes = (f"diffusers under bf16 autocast, sdserve --dtype {sdserve_best_dtype()}"
             if args.mode == "best" else "both f32")  # fmt: skip
    if tiny:
        modes += "; both decode with a TAESD-shaped tiny VAE (`pipe.vae = AutoencoderTiny`, `--fast-decode`)"
    if args.step_cache:
        modes += f"; both cache steps, interval {args.step_cache} (`DeepCacheSDHelper`, `--step-cache`)"
    print(f"## sdserve vs diffusers, CPU, {shape} shaped random weights ({modes})\n")
    print(f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    for line in machine_info():
        print(f"- {line}")
    if env_info:
        threads_note = (
            "(default, not set)" if thread_counts == [None] else "(set per row by OMP_NUM_THREADS, as sdserve's RAYON_NUM_THREADS)"
        )
        print(
            f"- diffusers {env_info['diffusers']}, torch {env_info['torch']}, "
            f"torch.get_num_threads() = {env_info['torch_threads']} in the last row {threads_note}"
        )
    if sdserve_version:
        print(f"- {sdserve_version} ({binary})")
    text = p["text_encoder"] + p.get("text_encoder_2", 0)
    print(
        f"- Model: UNet {p['unet'] / 1e6:.0f}M + text encoder(s) {text / 1e6:.0f}M + "
        f"VAE {p['vae'] / 1e6:.0f}M params, {stored}, `{cache}`"
    )
    print(
        f"- Job: \"{args.prompt}\", {args.steps} steps, CFG {CFG_SCALE:g}, {SAMPLER}, seed {SEED}, batch 1; "
        f"{args.runs} run(s) per cell, each a fresh process (start-up + load + generate + PNG write)"
    )
    print()
    shown = lambda t: "default" if t is None else str(t)  # noqa: E731
    print("| size | threads | tool | median s | min s | peak RSS MiB | breakdown (median / last run) |")
    print("|---|---:|---|---:|---:|---:|---|")
    for w, h in sizes:
        for threads in thread_counts:
            for tool in ("diffusers", "sdserve"):
                r = results.get((w, h, threads, tool))
                if r:
                    print(
                        f"| {w}x{h} | {shown(threads)} | {tool} | {r['median_s']:.1f} | {r['min_s']:.1f} | "
                        f"{r['peak_rss_mib']:.0f} | {details[(w, h, threads, tool)]} |"
                    )
    pairs = [(w, h, t) for w, h in sizes for t in thread_counts
             if (w, h, t, "sdserve") in results and (w, h, t, "diffusers") in results]  # fmt: skip
    if pairs:
        print()
        print("| size | threads | time sdserve/diffusers | peak RSS sdserve/diffusers |")
        print("|---|---:|---:|---:|")
        for w, h, t in pairs:
            s, d = results[(w, h, t, "sdserve")], results[(w, h, t, "diffusers")]
            print(
                f"| {w}x{h} | {shown(t)} | {s['median_s'] / d['median_s']:.2f} | "
                f"{s['peak_rss_mib'] / d['peak_rss_mib']:.2f} |"
            )
    if len(thread_counts) > 1:
        # Scaling: each tool's speed-up over its own run on the first count.
        first = thread_counts[0]
        print()
        print(f"| size | threads | diffusers speed-up over {first} | sdserve speed-up over {first} |")
        print("|---|---:|---:|---:|")
        for w, h in sizes:
            for t in thread_counts[1:]:
                cells = []
                for tool in ("diffusers", "sdserve"):
                    base, now = results.get((w, h, first, tool)), results.get((w, h, t, tool))
                    cells.append(f"{base['median_s'] / now['median_s']:.2f}x" if base and now else "")
                print(f"| {w}x{h} | {t} | {cells[0]} | {cells[1]} |")
    print()
    print("Ratios below 1 mean sdserve is faster / uses less memory.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(CACHES), default="sd15", help="model shapes (default: %(default)s)")
    ap.add_argument("--cache", help="model folder (default: bench/.cache/<family>-random)")
    sub = ap.add_subparsers(dest="cmd")

    sub.add_parser("build", help="only build the random-weight model")
    sub.add_parser("build-tiny-vae", help=argparse.SUPPRESS)

    d = sub.add_parser("_diffusers", help=argparse.SUPPRESS)
    d.add_argument("--model", required=True)
    d.add_argument("--prompt", required=True)
    d.add_argument("--steps", type=int, required=True)
    d.add_argument("--width", type=int, required=True)
    d.add_argument("--height", type=int, required=True)
    d.add_argument("--output", required=True)
    d.add_argument("--mode", choices=MODES, default="f32")
    d.add_argument("--fast-decode")
    d.add_argument("--step-cache", type=int, default=0)

    ap.add_argument("--sdserve", default="target/release/sdserve", help="sdserve binary (default: %(default)s)")
    ap.add_argument("--sizes", default="256x256,512x512", help="WxH list (default: %(default)s)")
    ap.add_argument("--mode", choices=MODES, default="f32", help="f32, or each tool's fastest CPU mode (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=2, help="runs per tool and size (default: %(default)s)")
    ap.add_argument("--threads", default="", metavar="LIST",
                    help="thread counts to run both tools with, e.g. 1,2,4 (default: each tool's own default)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the model even if cached")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--skip-sdserve", action="store_true")
    ap.add_argument("--fast-decode", action="store_true",
                    help="both tools decode with a random TAESD-shaped tiny VAE (built in bench/.cache/taesd-random)")
    ap.add_argument("--step-cache", type=int, default=0, metavar="N",
                    help="both tools cache UNet steps with DeepCache interval N (diffusers: the DeepCache package)")
    args = ap.parse_args()
    if args.cache is None:
        args.cache = str(CACHES[args.family])

    if args.cmd == "build":
        build(Path(args.cache).resolve(), args.family)
    elif args.cmd == "build-tiny-vae":
        build_tiny_vae(Path(args.cache).resolve())
    elif args.cmd == "_diffusers":
        diffusers_child(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
