"""Page load of sdserve's web page on localhost: the HTML and every file it
loads, as a browser gets them. Two measures, each the median of --runs:

  http     fetching `/` and every `/ui/*` file one after another over one
           keep-alive connection (what the server itself costs);
  browser  with --chromium, a fresh Debian chromium context loading `/` until
           its `load` event (parsing, modules, styles; the API calls the page
           makes afterwards are not part of the page load), against the same
           for `/livez` as the reference.

Usage: python bench/page_load.py --base-url http://127.0.0.1:7860 [--chromium /usr/bin/chromium]
"""

import argparse
import re
import statistics
import time

import requests


def assets_of(html, base):
    """The files the page names: its stylesheet, icon, entry module, and the
    modules those import (relative `./x.js` imports)."""
    names = set(re.findall(r'"/ui/([\w.-]+)"', html))
    queue = [n for n in names if n.endswith(".js")]
    while queue:
        text = requests.get(f"{base}/ui/{queue.pop()}", timeout=10).text
        for name in re.findall(r'from "\./([\w.-]+)"', text):
            if name not in names:
                names.add(name)
                queue.append(name)
    return sorted(names)


def http_ms(base, names, runs):
    times = []
    total_bytes = 0
    with requests.Session() as session:
        for _ in range(runs):
            start = time.perf_counter()
            total_bytes = len(session.get(f"{base}/", timeout=10).content)
            for name in names:
                total_bytes += len(session.get(f"{base}/ui/{name}", timeout=10).content)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), total_bytes


def browser_ms(base, chromium, runs):
    """Median ms to the load event of the page, and of `/livez` (a tiny JSON
    document: the browser's own cost of a fresh context and a navigation),
    alternated in one run so machine load hits both alike."""
    from playwright.sync_api import sync_playwright

    times = {"/": [], "/livez": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(runs):
            for path, found in times.items():
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{base}{path}", wait_until="load")
                nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
                found.append(nav["loadEventEnd"] - nav["startTime"])
                context.close()
        browser.close()
    return statistics.median(times["/"]), statistics.median(times["/livez"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--chromium")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    html = requests.get(f"{args.base_url}/", timeout=10).text
    names = assets_of(html, args.base_url)
    ms, size = http_ms(args.base_url, names, args.runs)
    print(f"files: / + {len(names)} ({size / 1024:.1f} KiB)")
    print(f"http: {ms:.1f} ms (median of {args.runs}, one after another)")
    if args.chromium:
        page, baseline = browser_ms(args.base_url, args.chromium, args.runs)
        print(f"browser: {page:.1f} ms to the load event; /livez {baseline:.1f} ms (ratio {page / baseline:.2f})")


if __name__ == "__main__":
    main()
