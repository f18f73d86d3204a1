#!/usr/bin/env python3
"""One command for a lent GPU: parity, the f16 bound, speed against diffusers.

Runs the CUDA build of `sdserve generate` (see ../shared/GPU.md for building
it) over every reference case of the tiny fixture models and compares the
PNGs with diffusers' f32 references: f32 within 3/255 (the CPU parity bound),
f16 within the bound `crates/sdserve-engine/tests/precision.rs` asserts on the
CPU. Then, unless --skip-speed, it builds a random-weight model with the SD 1.5
shapes (bench/bench.py build; needs diffusers importable, e.g. a carried
wheel on PYTHONPATH) and times diffusers and sdserve, CFG on, for each of
SPEED_CASES (f16 at 512x512 batch 1 and 4 and at 1024x1024, f32 at 512x512):
it/s, load time, peak GPU memory. It writes a markdown report to
<out>/gpu-report.md and exits non-zero when a parity bound, the server check or
an sdserve speed run fails.

Only the standard library is needed for the parity part (PNGs are decoded
here); the speed part needs torch and diffusers.
"""

import argparse
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
F32_BOUND = 3
F16_BOUND = 8


def decode_png_rgb(data: bytes) -> tuple[int, int, bytes]:
    """8-bit RGB/RGBA, non-interlaced PNG to (width, height, RGB bytes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, color {color}, interlace {interlace})")
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    out = bytearray()
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if filt == 1:
                line[i] = (line[i] + a) & 255
            elif filt == 2:
                line[i] = (line[i] + b) & 255
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        prev = line
        if bpp == 3:
            out += line
        else:
            for x in range(width):
                out += line[x * 4 : x * 4 + 3]
    return width, height, bytes(out)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs cmd in the repository; a missing program is a failed run, not a crash."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def parity(binary: Path, device: str, dtype: str, bound: int) -> tuple[bool, list[str]]:
    """Every reference case rendered with `dtype`; rows of a markdown table."""
    cases = json.loads((REPO / "fixtures/reference/cases.json").read_text())
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out = Path(tmp) / f"{case['model']}-{case['name']}.png"
            cmd = [
                str(binary), "generate", "--device", device, "--dtype", dtype,
                "--model", str(REPO / "fixtures/models" / case["model"]),
                "--prompt", case["prompt"], "--negative-prompt", case["negative_prompt"],
                "--seed", str(case["seed"]), "--steps", str(case["steps"]),
                "--cfg-scale", str(case["cfg_scale"]), "--sampler", case["sampler"],
                "--width", str(case["width"]), "--height", str(case["height"]),
                "--batch-size", str(case["batch_size"]), "--output", str(out),
            ]  # fmt: skip
            proc = run(cmd)
            if proc.returncode != 0:
                rows.append(f"| {case['model']} {case['name']} | {dtype} | failed: {proc.stderr.strip()[-200:]} |")
                ok = False
                continue
            n = len(case["images"])
            outputs = [out] if n == 1 else [out.with_name(f"{out.stem}-{i}.png") for i in range(n)]
            worst = 0
            for got, ref in zip(outputs, case["images"]):
                _, _, a = decode_png_rgb(got.read_bytes())
                _, _, b = decode_png_rgb((REPO / "fixtures" / ref).read_bytes())
                worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
            ok &= worst <= bound
            rows.append(f"| {case['model']} {case['name']} | {dtype} | max {worst}/255 (bound {bound}) |")
    return ok, rows


def gpu_memory_poller() -> tuple[threading.Event, list[int]]:
    """Polls nvidia-smi's used memory (MiB) every 100 ms until the event is set."""
    stop, samples = threading.Event(), []

    def poll():
        while not stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=5,
                ).stdout  # fmt: skip
                samples.append(int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.1)

    threading.Thread(target=poll, daemon=True).start()
    return stop, samples


# (width, height, batch, dtype) rows of the speed table; the first is GPU.md's headline case.
SPEED_CASES = {
    "sd15": [(512, 512, 1, "f16"), (512, 512, 4, "f16"), (1024, 1024, 1, "f16"), (512, 512, 1, "f32")],
    "sdxl": [(1024, 1024, 1, "f16")],
}
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
TORCH_DTYPES = {"f16": "float16", "f32": "float32"}


def diffusers_speed(cache: Path, steps: int, cases, family: str) -> dict:
    """One python process times every case (imports once); {case: (load s, it/s, peak MiB)}."""
    code = f"""
import time, torch
from diffusers import {PIPELINES[family]} as Pipeline, EulerAncestralDiscreteScheduler
pipe, loaded = None, None
for w, h, n, dtype in {cases!r}:
    if dtype != loaded:
        pipe = None; torch.cuda.empty_cache()
        t0 = time.perf_counter()
        pipe = Pipeline.from_pretrained({str(cache)!r}, torch_dtype=getattr(torch, {TORCH_DTYPES!r}[dtype]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False).to("cuda")
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        torch.cuda.synchronize(); load = time.perf_counter() - t0
        loaded = dtype
    pipe("warm-up", num_inference_steps=2, width=w, height=h, num_images_per_prompt=n)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t1 = time.perf_counter()
    pipe("a photograph of an astronaut riding a horse", num_inference_steps={steps}, guidance_scale=7.0,
         width=w, height=h, num_images_per_prompt=n, generator=torch.Generator("cuda").manual_seed(1))
    torch.cuda.synchronize(); gen = time.perf_counter() - t1
    print("RESULT", w, h, n, dtype, load, {steps} / gen, torch.cuda.max_memory_reserved() / 2**20, flush=True)
"""
    proc = run([sys.executable, "-c", code])
    found = {}
    for m in re.finditer(r"RESULT (\d+) (\d+) (\d+) (\w+) (\S+) (\S+) (\S+)", proc.stdout):
        found[(int(m[1]), int(m[2]), int(m[3]), m[4])] = (float(m[5]), float(m[6]), float(m[7]))
    if len(found) < len(cases):
        print(proc.stderr[-2000:], file=sys.stderr)
    return found


def speed(
    binary: Path, device: str, steps: int, cache: Path, family: str, with_diffusers: bool = True
) -> tuple[bool, list[str]]:
    """The speed table; False when the model build or an sdserve run failed."""
    if not (cache / "model_index.json").exists():
        t0 = time.perf_counter()
        proc = run([sys.executable, str(REPO / "bench/bench.py"), "--family", family, "--cache", str(cache), "build"])
        if proc.returncode != 0:
            return False, [f"model build failed: {proc.stderr[-500:]}"]
        print(f"model built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    lines = [
        f"{steps} steps, Euler a, CFG 7. diffusers: load once per dtype, one warm-up call, then the timed call;"
        " peak = torch's max_memory_reserved. sdserve: a fresh process per row (load = process start to"
        " first step); peak = nvidia-smi's used memory, polled every 100 ms.",
        "",
        "| case | tool | load s | it/s | peak GPU MiB | ratio (sdserve it/s / diffusers it/s) |",
        "|---|---|---|---|---|---|",
    ]
    ok = True
    cases = SPEED_CASES[family]
    reference = diffusers_speed(cache, steps, cases, family) if with_diffusers else {}
    for w, h, n, dtype in cases:
        case = f"{w}x{h} batch {n} {dtype}"
        ref = reference.get((w, h, n, dtype))
        if ref:
            lines.append(f"| {case} | diffusers | {ref[0]:.2f} | {ref[1]:.2f} | {ref[2]:.0f} | |")
        elif with_diffusers:
            lines.append(f"| {case} | diffusers | failed | | | |")
        with tempfile.TemporaryDirectory() as tmp:
            stop, samples = gpu_memory_poller()
            t0 = time.perf_counter()
            proc = run([
                str(binary), "generate", "--device", device, "--dtype", dtype, "--model", str(cache),
                "--prompt", "a photograph of an astronaut riding a horse", "--steps", str(steps),
                "--cfg-scale", "7", "--sampler", "Euler a", "--width", str(w), "--height", str(h),
                "--batch-size", str(n), "--seed", "1", "--output", str(Path(tmp) / "x.png"),
            ])  # fmt: skip
            wall = time.perf_counter() - t0
            stop.set()
        m = re.search(r"timings: load (\S+)s.*\((\S+) it/s\), decoding (\S+)s", proc.stderr)
        if m:
            ratio = f"{float(m[2]) / ref[1]:.2f}" if ref else ""
            lines.append(
                f"| {case} | sdserve | {float(m[1]):.2f} | {float(m[2]):.2f} | {max(samples, default=0)} | {ratio}"
                f" (decode {float(m[3]):.2f} s, process {wall:.1f} s) |"
            )
        else:
            ok = False
            lines.append(f"| {case} | sdserve | failed: {proc.stderr.strip()[-300:]} | | | |")
        print(lines[-1], file=sys.stderr, flush=True)
    return ok, lines


def server(binary: Path, device: str) -> tuple[bool, list[str]]:
    """`sdserve serve` on the device: /readyz, then one A1111 txt2img request decoded and
    checked; False when any of it failed or the server did not exit cleanly."""
    import base64
    import urllib.request

    port = 17861
    try:
        proc = subprocess.Popen(
            [str(binary), "serve", "--device", device, "--model", str(REPO / "fixtures/models/tiny-sd1"),
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
    except OSError as e:
        return False, [f"- server did not start: {e}"]
    base = f"http://127.0.0.1:{port}"
    lines, ok = [], False
    try:
        ready = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    ready = json.loads(r.read() or b"{}")
                    break
            except OSError:
                time.sleep(0.5)
        lines.append(f"- `/readyz`: {json.dumps(ready)[:600] if ready is not None else 'never ready'}")
        body = json.dumps({"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1}).encode()
        req = urllib.request.Request(base + "/sdapi/v1/txt2img", body, {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.loads(r.read())
        w, h, _ = decode_png_rgb(base64.b64decode(reply["images"][0]))
        ok = (w, h) == (64, 64)
        lines.append(f"- `POST /sdapi/v1/txt2img` (64x64, 4 steps): {w}x{h} PNG in {time.perf_counter() - t0:.2f} s")
    except Exception as e:  # noqa: BLE001 (the report says what failed)
        lines.append(f"- server check failed: {e!r}")
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        ok &= proc.returncode == 0
        lines.append(f"- exit {proc.returncode}; last log lines: `{' / '.join(err.strip().splitlines()[-3:])[:600]}`")
    return ok, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdserve", default=str(REPO / "target/release/sdserve"))
    ap.add_argument("--device", default="cuda", help="sdserve --device (cpu checks the script itself)")
    ap.add_argument("--out", default=os.environ.get("OUT", str(REPO / "gpu-report")))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cache", default=str(REPO / "bench/.cache/sd15-random"))
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-diffusers", action="store_true", help="time sdserve alone")
    ap.add_argument("--family", choices=sorted(SPEED_CASES), default="sd15", help="model shapes for the speed part")
    args = ap.parse_args()
    binary = Path(args.sdserve)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    gpu = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).stdout.strip()
    report = [
        "# sdserve GPU check",
        "",
        f"- commit {commit}, kernel `{platform.release()}` (4.4.0 means gVisor), device `{args.device}`",
        f"- GPU: {gpu or 'nvidia-smi not available'}",
        "",
    ]
    ok32, ok16, server_ok, speed_ok = True, True, True, True
    if not args.skip_parity:
        report += ["## Parity with diffusers' f32 references", "", "| case | dtype | result |", "|---|---|---|"]
        ok32, rows32 = parity(binary, args.device, "f32", F32_BOUND)
        ok16, rows16 = parity(binary, args.device, "f16", F16_BOUND)
        report += rows32 + rows16
        report += ["", f"f32 {'PASS' if ok32 else 'FAIL'}, f16 {'PASS' if ok16 else 'FAIL'}", ""]
        # Written now too, so a speed run cut short still leaves the parity results.
        (out / "gpu-report.md").write_text("\n".join(report) + "\n")
    if not args.skip_server:
        server_ok, rows = server(binary, args.device)
        report += ["## Server", ""] + rows + [""]
        (out / "gpu-report.md").write_text("\n".join(report) + "\n")
    if not args.skip_speed:
        shapes = "SDXL base" if args.family == "sdxl" else "SD 1.5"
        report += [f"## Speed at {shapes} shapes (random weights)", ""]
        speed_ok, rows = speed(binary, args.device, args.steps, Path(args.cache), args.family, not args.skip_diffusers)
        report += rows
    text = "\n".join(report) + "\n"
    (out / "gpu-report.md").write_text(text)
    print(text)
    sys.exit(0 if ok32 and ok16 and server_ok and speed_ok else 1)


if __name__ == "__main__":
    main()
