"""Runs schemathesis against a running sdserve's /openapi.json and fails on any
failure of any of its checks: "the spec is the truth".

Every check (`--checks all`) runs on positive data (what the schema allows must
be accepted: 2xx, or a documented 401/403/404/409/429) and negative data (what
it forbids must be refused with a 4xx), through the examples, coverage,
fuzzing and stateful phases (stateful chains follow the `Location` header of
`POST /api/v1/jobs` into the job routes). Beyond the 5xx, undocumented status,
content type, header and response-schema checks, that covers unknown methods
(405 with `Allow`), deleted resources and authentication (the server runs
without keys).

Rules JSON Schema cannot state (width × height <= --max-pixels) are out of
reach with the limits the driving test sets, so no status is excused.

Usage: python run_schemathesis.py --base-url http://127.0.0.1:PORT [--max-examples N]
Driven by crates/sdserve/tests/clients.rs, which starts the server with small
limits (so every generated request is cheap) and a queue large enough that no
fuzzed burst of native jobs meets a 429.
"""

import argparse
import subprocess
import sys

# Checks that cannot pass yet, each with the reason in the docstring above.
PENDING: list[str] = []
IMAGE_INPUT_PATHS = ["/sdapi/v1/img2img", "/v1/images/edits"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--max-examples", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{args.base_url}/openapi.json",
        "--checks", "all",
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(args.max_examples),
        "--seed", str(args.seed),
        "--workers", "1",
        "--request-timeout", "60",
        "--suppress-health-check", "all",
        "--continue-on-failure",
        "--no-shrink",
        "--no-color",
    ]
    if PENDING:
        cmd += ["--exclude-checks", ",".join(PENDING)]
    # The image-to-image routes take images (base64 or multipart files): no
    # schema makes a fuzzer's strings decodable images, so its positive data
    # would be refused (422) by design. They have their own HTTP and client
    # tests (crates/sdserve-server/tests/http/img2img.rs, test_img2img.py).
    for path in IMAGE_INPUT_PATHS:
        cmd += ["--exclude-path", path]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
