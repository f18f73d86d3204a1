"""Cold start: process start to `/readyz` 200, for a model with SD 1.5's shapes.

What autoscaling waits for (the GKE write-up measured ~12 minutes from scale-up
to serving for a 16.3 GB A1111 image). Each run starts a fresh `sdserve serve`
(or a fresh container of the image) and polls `/readyz` every 10 ms; the time
is from just before the process (or `docker run`) is started to the first 200.

    python3 bench/coldstart.py                       # binary, page cache warm and cold
    python3 bench/coldstart.py --image sdserve:cpu   # also `docker run` of the image (runc, runsc)

Page cache: "warm" runs follow a run that read the same files; "cold" runs first
evict the model's files from the page cache with posix_fadvise(DONTNEED) (only
those files, so other work on the machine keeps its cache), checked with
`fincore`; `--drop all` instead writes 3 to /proc/sys/vm/drop_caches (root).
Standard library only; the model comes from `bench.py build`.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_files(model: Path) -> list[Path]:
    return [p for p in model.rglob("*") if p.is_file()]


def evict(model: Path, how: str) -> int:
    """Evicts the model from the page cache; returns the bytes still cached."""
    if how == "all":
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        for path in model_files(model):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return cached_bytes(model)


def cached_bytes(model: Path) -> int:
    if not shutil.which("fincore"):
        return -1
    files = [str(p) for p in model_files(model)]
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
        capture_output=True, text=True,
    )
    return sum(int(x) for x in out.stdout.split() if x.isdigit())


def wait_ready(port: int, proc, deadline_s: float = 600) -> float:
    start = time.monotonic()
    url = f"http://127.0.0.1:{port}/readyz"
    polls = 0
    while time.monotonic() - start < deadline_s:
        polls += 1
        # Whether it died: every 0.5 s (a container's costs a `docker inspect`).
        if polls % 50 == 0 and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError("not ready in time")


def run_binary(binary: Path, model: Path, outputs: Path) -> float:
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(binary), "serve", "--model", str(model), "--port", str(port),
         "--output-dir", str(outputs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        return wait_ready(port, proc) - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_image(image: str, runtime: str, model: Path, outputs: Path) -> float:
    outputs.mkdir(parents=True, exist_ok=True)
    os.chown(outputs, 10001, 10001)
    port = free_port()
    t0 = time.monotonic()
    cid = subprocess.run(
        ["docker", "run", "-d", "--runtime", runtime, "-p", f"127.0.0.1:{port}:7860",
         "--read-only", "--tmpfs", "/tmp", "-v", f"{outputs}:/data/outputs",
         "-v", f"{model}:/models/sd15:ro", "-e", "SDSERVE_MODEL=/models/sd15", image],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    try:
        return wait_ready(port, ContainerProcess(cid)) - t0
    except RuntimeError:
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
        print(logs.stdout[-2000:], logs.stderr[-2000:], file=sys.stderr)
        raise
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


class ContainerProcess:
    """A container seen as wait_ready's process: poll() is None while it runs."""

    def __init__(self, cid: str):
        self.cid, self.returncode = cid, None

    def poll(self):
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.cid],
                             capture_output=True, text=True).stdout.split()
        if out and out[0] == "false":
            self.returncode = int(out[1])
        return self.returncode


def machine() -> list[str]:
    cpu, flags = platform.machine(), ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].strip()
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    simd = [f for f in flags.split() if f.startswith(("avx", "sse4", "fma", "f16c", "amx"))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return [
        f"CPU: {cpu}, {os.cpu_count()} logical cores, {mem:.0f} GiB RAM; kernel {platform.release()}",
        f"SIMD flags: {' '.join(simd) or 'none of avx/sse4/fma/f16c'}",
        f"commit {commit}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdserve", default=str(ROOT / "target/release/sdserve"))
    ap.add_argument("--model", default=str(ROOT / "bench/.cache/sd15-random"))
    ap.add_argument("--image", help="also time `docker run` of this image")
    ap.add_argument("--runtimes", default="runc,runsc", help="docker runtimes for --image")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--drop", choices=["file", "all"], default="file")
    args = ap.parse_args()
    binary, model = Path(args.sdserve), Path(args.model).resolve()
    if not binary.is_file() or not (model / "model_index.json").is_file():
        print(f"need {binary} and {model} (python bench/bench.py build)", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in model_files(model))
    # The server hashes the model's UNet once (sha256, A1111's model hash) and keeps
    # it in the output folder: a first start pays it, a restart with the same
    # output folder (a volume) does not.
    with tempfile.TemporaryDirectory() as keep:
        return report(args, binary, model, size, Path(keep))


def report(args, binary: Path, model: Path, size: int, keep: Path) -> int:
    cases = [
        ("binary, first start (fresh output folder: hashes the UNet)", lambda out: run_binary(binary, model, out)),
        ("binary, restart (hash kept in the output folder)", lambda out: run_binary(binary, model, keep / "bin")),
    ]
    if args.image:
        for rt in args.runtimes.split(","):
            cases.append((f"docker run ({rt}), restart (outputs volume kept)",
                          lambda out, rt=rt: run_image(args.image, rt, model, keep / rt)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in cases:
            times = {"warm": [], "cold": []}
            run(Path(tmp) / "prime")  # fills the page cache for the first warm run
            for i in range(args.runs):
                times["warm"].append(run(Path(tmp) / f"w{i}"))
                left = evict(model, args.drop)
                times["cold"].append(run(Path(tmp) / f"c{i}"))
                print(f"{name} run {i}: warm {times['warm'][-1]:.2f} s, cold {times['cold'][-1]:.2f} s"
                      f" (cached before cold start: {left / 1e6:.0f} MB)", file=sys.stderr)
            rows.append((name, times))
    print(f"Model: SD 1.5 shapes, fp32 safetensors, {size / 1e9:.2f} GB; {args.runs} runs each;"
          f" cold = {'drop_caches' if args.drop == 'all' else 'model files evicted (posix_fadvise)'}")
    for line in machine():
        print(f"- {line}")
    print("\n| start | page cache warm (median, min) | cold (median, min) |\n|---|---|---|")
    for name, t in rows:
        w, c = t["warm"], t["cold"]
        print(f"| {name} | {statistics.median(w):.2f} s, {min(w):.2f} s | {statistics.median(c):.2f} s, {min(c):.2f} s |")
    print("\n" + json.dumps({name: t for name, t in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
