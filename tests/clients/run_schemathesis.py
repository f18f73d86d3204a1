"""Runs schemathesis against a running sdserve's /openapi.json with a bounded
number of examples, and fails on any 5xx, any undocumented status or content
type, or any response body that breaks its schema.

Usage: python run_schemathesis.py --base-url http://127.0.0.1:PORT [--max-examples N]
Driven by crates/sdserve/tests/clients.rs (which starts the server with small limits,
so every generated request is cheap).
"""

import argparse
import subprocess
import sys

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--max-examples", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{args.base_url}/openapi.json",
        "--checks", CHECKS,
        "--max-examples", str(args.max_examples),
        "--seed", str(args.seed),
        "--workers", "1",
        "--request-timeout", "60",
        "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        "--no-shrink",
    ]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
