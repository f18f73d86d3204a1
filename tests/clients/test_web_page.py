"""The web page at `/`, in a real browser: Debian's chromium driven by
Playwright (its own browser download is never used). Run by
crates/sdserve/tests/web_page.rs against `sdserve serve` on the tiny model.

Scenarios (`--scenario`):
  page  generate (Ctrl+Enter) and see the API's image for the same seed at
        the requested size, progress to the last step, the viewer ("use these
        settings", copy infotext), PNG info (file input and drop) fills the
        form, the server's 422 beside its field, send to img2img with a drawn
        mask, cancel a long job (its live preview seen first), a reload keeps
        the gallery, and a phone-sized viewport.
  auth  a server with --api-key and --queue-size 1: the page asks for the key
        once (a wrong key is refused), keeps it across a reload, and shows a
        429 with its Retry-After.
  basic a server with --api-auth and a small --memory-limit: the page's prompt
        takes user and password; an image too large for the memory plan
        shows the server's 413 beside Width.
Screenshots go to --screenshots.
"""

import argparse
import base64
import io
import sys
import time

import requests
from PIL import Image, PngImagePlugin
from playwright.sync_api import expect, sync_playwright

TIMEOUT_MS = 120_000


def log(message):
    print(f"[web] {message}", flush=True)


class Api:
    """The native API as the tests call it directly, for reference images."""

    def __init__(self, base, key=None):
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def submit(self, body):
        r = requests.post(f"{self.base}/api/v1/jobs", json=body, headers=self.headers, timeout=30)
        return r

    def wait(self, job_id):
        deadline = time.time() + 300
        while time.time() < deadline:
            job = requests.get(f"{self.base}/api/v1/jobs/{job_id}", headers=self.headers, timeout=30).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish")

    def png(self, body):
        r = self.submit(body)
        assert r.status_code == 202, r.text
        job = self.wait(r.json()["id"])
        assert job["status"] == "succeeded", job
        url = job["images"][0]["url"]
        return requests.get(f"{self.base}{url}", headers=self.headers, timeout=30).content

    def cancel(self, job_id):
        requests.post(f"{self.base}/api/v1/jobs/{job_id}/cancel", headers=self.headers, timeout=30)


def launch(p, chromium):
    return p.chromium.launch(
        executable_path=chromium,
        # Root in a container: chromium's sandbox needs user namespaces.
        args=["--no-sandbox", "--disable-dev-shm-usage"],
    )


def watch_console(page, errors):
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    def console(m):
        # A 401, 422 or 429 answer is logged by the browser; the page handles it.
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            errors.append(f"console {m.type}: {m.text}")

    page.on("console", console)


def open_page(page, base):
    page.goto(f"{base}/")
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)


def displayed_image(page, selector):
    """What an <img> on the page shows: the image id it was fetched by, its
    natural size and its RGB pixels (read back through a canvas)."""
    page.wait_for_selector(f"{selector}[src^='blob:']", timeout=TIMEOUT_MS)
    found = page.eval_on_selector(
        selector,
        """async (img) => {
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let text = "";
            for (let i = 0; i < rgba.length; i += 4) {
                text += String.fromCharCode(rgba[i], rgba[i + 1], rgba[i + 2]);
            }
            return { id: img.dataset.id, rgb: btoa(text), w: img.naturalWidth, h: img.naturalHeight };
        }""",
    )
    return found["id"], (found["w"], found["h"]), base64.b64decode(found["rgb"])


def record_status(page):
    """Keeps every text the progress line shows (window.statusSeen)."""
    page.evaluate(
        """() => {
            window.statusSeen = [];
            const line = document.getElementById("job-status");
            new MutationObserver(() => window.statusSeen.push(line.textContent))
                .observe(line, { childList: true, characterData: true, subtree: true });
        }"""
    )


def fill_form(page, settings):
    page.get_by_label("Prompt", exact=True).fill(settings["prompt"])
    page.get_by_label("Negative prompt", exact=True).fill(settings["negative_prompt"])
    page.get_by_label("Sampler", exact=True).select_option(label=settings["sampler_label"])
    page.get_by_label("Schedule", exact=True).select_option(label=settings["schedule_label"])
    for label, key in [("Steps", "steps"), ("CFG scale", "cfg_scale"), ("Width", "width"),
                       ("Height", "height"), ("Seed", "seed"), ("Batch size", "batch_size")]:
        page.get_by_label(label, exact=True).fill(str(settings[key]))


def api_body(settings):
    body = {k: settings[k] for k in
            ["prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "seed", "batch_size"]}
    body["sampler"] = settings["sampler"]
    body["schedule_type"] = settings["schedule_type"]
    return body


def generate_matches_the_api(page, api, shots):
    settings = {
        "prompt": "a red fox in the snow", "negative_prompt": "blurry", "sampler": "dpmpp_2m_sde",
        "sampler_label": "DPM++ 2M SDE", "schedule_type": "exponential",
        # 40 steps: long enough (~0.5 s on the tiny model) for the event
        # stream to show a running step even on a fast CPU; 8 steps (0.09 s)
        # could finish between two events.
        "schedule_label": "Exponential", "steps": 40, "cfg_scale": 6.5, "width": 64, "height": 48,
        "seed": 1234, "batch_size": 1,
    }
    fill_form(page, settings)
    record_status(page)
    # Ctrl+Enter submits from anywhere in the form.
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    image_id, size, pixels = displayed_image(page, "#latest img")
    assert size == (64, 48), size
    reference = api.png(api_body(settings))
    # The PNG the page fetched is the API's for the same settings, byte for
    # byte (infotext included), and the page shows exactly its pixels.
    shown = requests.get(f"{api.base}/api/v1/images/{image_id}", timeout=30).content
    assert shown == reference, "the page's image differs from the API's for the same settings"
    assert pixels == Image.open(io.BytesIO(reference)).convert("RGB").tobytes(), "pixels differ"
    png = shown
    seen = page.evaluate("window.statusSeen")
    assert any(s.startswith("Step ") for s in seen), seen
    progress = page.eval_on_selector("#progress", "p => [p.value, p.max]")
    assert progress == [settings["steps"]] * 2, progress
    expect(page.locator("#job-status")).to_contain_text("Done: 1 image")
    expect(page.get_by_role("button", name="Reuse last seed")).to_be_enabled()
    page.get_by_role("button", name="Random seed").click()
    assert page.get_by_label("Seed", exact=True).input_value() == ""
    page.get_by_role("button", name="Reuse last seed").click()
    assert page.get_by_label("Seed", exact=True).input_value() == "1234"
    page.screenshot(path=f"{shots}/desktop.png")
    log(f"generate: the page shows the API's PNG at 64x48 ({len(png)} bytes); progress {seen[-2:]}")
    return settings


def viewer_reuses_settings(page, settings):
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Steps", exact=True).fill("3")
    page.locator("#latest button.tile").first.click()
    viewer = page.get_by_role("dialog", name="Seed 1234 · 64×48")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-infotext")).to_contain_text("Seed: 1234")
    page.get_by_role("button", name="Copy infotext").click()
    expect(page.locator("#viewer-message")).to_have_text("Infotext copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "Steps: 40," in copied and "Seed: 1234" in copied, copied
    download = page.get_by_role("link", name="Download")
    assert download.get_attribute("download").startswith("sdserve-1234-")
    page.get_by_role("button", name="Use these settings").click()
    expect(viewer).to_be_hidden()
    assert page.get_by_label("Prompt", exact=True).input_value() == settings["prompt"]
    assert page.get_by_label("Steps", exact=True).input_value() == "40"
    assert page.get_by_label("CFG scale", exact=True).input_value() == "6.5"
    log("viewer: infotext copied, settings reused")


def hires_fix_matches_the_api(page, api, settings):
    """The hires fix section: the page's image is the API's `hires` job's, at the target size."""
    page.get_by_role("button", name="Remove image").click()
    expect(page.locator("#img2img-state")).to_have_text("(off)")
    fill_form(page, settings)
    old = page.eval_on_selector("#latest img", "img => img.dataset.id")
    page.locator("#hires summary").click()
    page.get_by_label("Generate at the size above, then enlarge and refine").check()
    expect(page.locator("#hires-state")).to_have_text("(on)")
    page.get_by_label("Upscale by", exact=True).fill("1.5")
    page.get_by_label("Upscaler", exact=True).select_option("Lanczos")
    page.get_by_label("Hires steps", exact=True).fill("2")
    page.get_by_label("Denoising strength", exact=True).fill("0.5")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("id => document.querySelector('#latest img')?.dataset.id !== id", arg=old,
                           timeout=TIMEOUT_MS)
    image_id, size, _ = displayed_image(page, "#latest img")
    assert size == (96, 72), size
    body = api_body(settings)
    body["hires"] = {"scale": 1.5, "upscaler": "Lanczos", "steps": 2, "denoising_strength": 0.5}
    shown = requests.get(f"{api.base}/api/v1/images/{image_id}", timeout=30).content
    assert shown == api.png(body), "the page's hires image differs from the API's"
    # A hires image's infotext fills the section back ("Use these settings").
    page.get_by_label("Generate at the size above, then enlarge and refine").uncheck()
    page.locator("#latest button.tile").first.click()
    page.get_by_role("button", name="Use these settings").click()
    expect(page.locator("#hires-state")).to_have_text("(on)")
    assert page.get_by_label("Upscaler", exact=True).input_value() == "Lanczos"
    assert page.get_by_label("Hires steps", exact=True).input_value() == "2"
    page.get_by_label("Generate at the size above, then enlarge and refine").uncheck()
    page.locator("#hires summary").click()
    log("hires fix: the page shows the API's 96x72 hires PNG; its infotext fills the section")


def a1111_png(path):
    """A PNG as A1111 writes it: a multi-line prompt, non-Latin-1 text (so an
    iTXt chunk), the 1.9+ sampler and schedule keys."""
    info = PngImagePlugin.PngInfo()
    text = (
        "a fox \U0001F98A at dawn\nwide shot\n"
        "Negative prompt: lowres, text\n"
        "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 777, "
        "Size: 96x64, Model hash: 0123456789, Model: elsewhere, Version: v1.10.1"
    )
    info.add_text("parameters", text)
    Image.new("RGB", (96, 64), (40, 90, 160)).save(path, pnginfo=info)


def png_info_fills_the_form(page, tmp):
    path = f"{tmp}/a1111.png"
    a1111_png(path)

    def check():
        assert page.get_by_label("Prompt", exact=True).input_value() == "a fox \U0001F98A at dawn\nwide shot"
        assert page.get_by_label("Negative prompt", exact=True).input_value() == "lowres, text"
        assert page.get_by_label("Steps", exact=True).input_value() == "12"
        assert page.get_by_label("CFG scale", exact=True).input_value() == "4.5"
        assert page.get_by_label("Seed", exact=True).input_value() == "777"
        assert page.get_by_label("Width", exact=True).input_value() == "96"
        assert page.get_by_label("Height", exact=True).input_value() == "64"
        assert page.get_by_label("Sampler", exact=True).input_value() == "dpmpp_2m"
        assert page.get_by_label("Schedule", exact=True).input_value() == "karras"

    page.locator("#pnginfo-file").set_input_files(path)
    dialog = page.get_by_role("dialog", name="PNG info")
    expect(dialog).to_contain_text("Schedule type: Karras")
    check()
    page.get_by_role("button", name="Close").click()
    # Dropped on the page: the same.
    page.get_by_label("Prompt", exact=True).fill("x")
    with open(path, "rb") as f:
        data = list(f.read())
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "a1111.png", { type: "image/png" });
            const dt = new DataTransfer();
            dt.items.add(file);
            document.querySelector("main").dispatchEvent(
                new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        data,
    )
    expect(dialog).to_be_visible()
    check()
    page.get_by_role("button", name="Close").click()
    log("PNG info: file input and drop fill the form")


def bad_input_shows_the_servers_message(page, api):
    page.get_by_label("Width", exact=True).fill("65")
    prompt = page.get_by_label("Prompt", exact=True).input_value()
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#width-error")
    expect(error).not_to_be_empty()
    body = api_body({
        "prompt": prompt, "negative_prompt": page.get_by_label("Negative prompt", exact=True).input_value(),
        "steps": 12, "cfg_scale": 4.5, "width": 65, "height": 64, "seed": 777, "batch_size": 1,
        "sampler": "dpmpp_2m", "schedule_type": "karras",
    })
    server = api.submit(body)
    assert server.status_code == 422 and server.json()["field"] == "width", server.text
    assert error.text_content() == server.json()["error"], (error.text_content(), server.text)
    assert page.get_by_label("Width", exact=True).get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Prompt", exact=True).input_value() == prompt, "the form was cleared"
    page.get_by_label("Width", exact=True).fill("64")
    expect(error).to_be_empty()
    log(f"422: {error.text_content() or server.json()['error']!r} beside Width")


def img2img_with_a_drawn_mask(page):
    page.locator("#latest button.tile").first.click()
    page.get_by_role("button", name="Send to img2img").click()
    expect(page.locator("#img2img-state")).to_have_text("(on)")
    assert page.get_by_label("Width", exact=True).input_value() == "64"
    assert page.get_by_label("Height", exact=True).input_value() == "48"
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    expect(page.locator("#img2img-state")).to_have_text("(inpainting)")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Strength", exact=True).fill("0.9")
    before = page.locator("#latest img").get_attribute("data-id")
    page.get_by_role("button", name="Generate").click()
    fresh = f"#latest img:not([data-id='{before}'])"
    image_id, size, _ = displayed_image(page, fresh)
    assert image_id != before and size == (64, 48), (image_id, size)
    job = requests.get(f"{page.url.rstrip('/')}/api/v1/jobs?limit=1", timeout=30).json()["jobs"][0]
    assert job["params"]["inpainting"] and job["params"]["strength"] == 0.9, job["params"]
    page.get_by_role("button", name="Remove image").click()
    expect(page.locator("#img2img-state")).to_have_text("(off)")
    log("img2img: a drawn mask inpaints at the init image's size")


def cancel_a_long_job(page, api, shots):
    tiles_before = page.locator("#gallery li").count()
    page.get_by_label("Steps", exact=True).fill("150")
    page.get_by_label("Width", exact=True).fill("256")
    page.get_by_label("Height", exact=True).fill("256")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-status")).to_contain_text("Step ", timeout=TIMEOUT_MS)
    expect(page.locator("#live-preview")).to_be_visible()
    assert page.locator("#live-preview").get_attribute("src").startswith("data:image/png;base64,")
    expect(page.locator("#job-status")).to_contain_text("left")
    page.screenshot(path=f"{shots}/running.png")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("Cancelled.", timeout=TIMEOUT_MS)
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert page.locator("#gallery li").count() == tiles_before, (page.locator("#gallery li").count(), tiles_before)
    jobs = requests.get(f"{api.base}/api/v1/jobs?limit=1", headers=api.headers, timeout=30).json()["jobs"]
    assert jobs[0]["status"] == "cancelled" and jobs[0]["params"]["steps"] == 150, jobs[0]
    step = jobs[0]["progress"]["step"]
    assert step < 150, step
    log(f"cancel: stopped at step {step}/150, live preview seen")


def reload_keeps_the_gallery(page, api):
    count = page.locator("#gallery li").count()
    assert count >= 2, count
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    # This browser's images, and the server's list for this caller (which
    # also holds the two reference images the test asked the API for: the
    # plain one and the hires one).
    jobs = requests.get(f"{api.base}/api/v1/jobs", timeout=30).json()["jobs"]
    on_server = sum(len(j["images"]) for j in jobs if j["status"] == "succeeded")
    assert on_server == count + 2, (on_server, count)
    expect(page.locator("#gallery li")).to_have_count(on_server)
    # The form was kept too.
    assert page.get_by_label("Steps", exact=True).input_value() == "150"
    log(f"reload: {count} images kept, the API's two added from the server's list")


def phone(browser, base, shots, errors):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    watch_console(page, errors)
    open_page(page, base)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    for label in ["Prompt", "Negative prompt", "Sampler", "Steps", "CFG scale", "Width", "Height",
                  "Seed", "Batch size"]:
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_role("button", name="Generate").tap()
    _, size, _ = displayed_image(page, "#latest img")
    assert size == (64, 64)
    # Scrolled through once, so the lazily loaded gallery shows in the shot.
    page.mouse.wheel(0, 10_000)
    page.wait_for_timeout(300)
    page.screenshot(path=f"{shots}/phone.png", full_page=True)
    context.close()
    log("phone: no horizontal scroll, generate works")


def scenario_page(args):
    api = Api(args.base_url)
    errors = []
    with sync_playwright() as p:
        browser = launch(p, args.chromium)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=args.base_url)
        page = context.new_page()
        watch_console(page, errors)
        open_page(page, args.base_url)
        settings = generate_matches_the_api(page, api, args.screenshots)
        viewer_reuses_settings(page, settings)
        png_info_fills_the_form(page, args.screenshots)
        bad_input_shows_the_servers_message(page, api)
        img2img_with_a_drawn_mask(page)
        hires_fix_matches_the_api(page, api, settings)
        # The screenshot for the README: a finished job, a filled form, from the top.
        page.get_by_label("Prompt", exact=True).fill("a red fox in the snow, golden hour")
        page.evaluate("""() => {
            document.activeElement.blur();
            document.getElementById("img2img").open = false;
            window.scrollTo(0, 0);
        }""")
        page.screenshot(path=f"{args.screenshots}/screenshot.png")
        cancel_a_long_job(page, api, args.screenshots)
        reload_keeps_the_gallery(page, api)
        context.close()
        phone(browser, args.base_url, args.screenshots, errors)
        browser.close()
    assert not errors, "\n".join(errors)


def scenario_auth(args):
    api = Api(args.base_url, args.key)
    errors = []
    with sync_playwright() as p:
        browser = launch(p, args.chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        watch_console(page, errors)
        page.goto(f"{args.base_url}/")
        dialog = page.get_by_role("dialog", name="Sign in")
        expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
        expect(dialog).to_contain_text("wants an API key")
        page.get_by_label("API key", exact=True).fill("wrong-key")
        page.get_by_role("button", name="Sign in").click()
        expect(dialog).to_contain_text("refused")
        page.screenshot(path=f"{args.screenshots}/auth.png")
        page.get_by_label("API key", exact=True).fill(args.key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        expect(dialog).to_be_hidden()
        expect(page.locator("#server-status")).to_contain_text("Model: ")
        # Kept for the session: a reload does not ask again.
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        expect(dialog).to_be_hidden()
        page.get_by_label("Prompt", exact=True).fill("a key-holder's fox")
        page.get_by_label("Steps", exact=True).fill("150")
        page.get_by_label("Width", exact=True).fill("256")
        page.get_by_label("Height", exact=True).fill("256")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#job-status")).to_contain_text("Step ", timeout=TIMEOUT_MS)
        # The queue (one place) fills behind it; the next submit is a 429.
        waiting = api.submit({"prompt": "waiting", "steps": 150, "width": 256, "height": 256})
        assert waiting.status_code == 202, waiting.text
        page.get_by_role("button", name="Generate").click()
        message = page.locator("#form-error")
        expect(message).to_contain_text("Retry in")
        log(f"429: {message.text_content()!r}")
        assert page.get_by_label("Prompt", exact=True).input_value() == "a key-holder's fox"
        api.cancel(waiting.json()["id"])
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#job-status")).to_have_text("Cancelled.", timeout=TIMEOUT_MS)
        browser.close()
    assert not errors, "\n".join(errors)
    log("auth: asked once, wrong key refused, kept across a reload")


def scenario_basic(args):
    """A server with --api-auth: the page's own prompt (not the browser's)
    takes a user name and password; then the memory plan's 413."""
    user, password = args.basic.split(":", 1)
    errors = []
    with sync_playwright() as p:
        browser = launch(p, args.chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        watch_console(page, errors)
        page.goto(f"{args.base_url}/")
        dialog = page.get_by_role("dialog", name="Sign in")
        expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
        expect(dialog).to_contain_text("user name and password")
        page.get_by_label("User name", exact=True).fill(user)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        expect(page.locator("#server-status")).to_contain_text("Model: ")
        page.get_by_label("Prompt", exact=True).fill("a fox")
        page.get_by_label("Steps", exact=True).fill("2")
        page.get_by_role("button", name="Generate").click()
        _, size, _ = displayed_image(page, "#latest img")
        assert size == (64, 64), size
        # This server's memory plan (--memory-limit 60M, less the process's own
        # resident memory) fits a small square at most: the page shows the
        # server's figure, and a larger size is its 413 beside the field it names.
        limits = requests.get(f"{args.base_url}/api/v1/limits", auth=(user, password), timeout=30).json()
        square = limits["largest_square"]
        assert 64 <= square < 512, limits
        expect(page.locator("#size-hint")).to_contain_text(f"fits in memory up to {square}×{square}")
        page.get_by_label("Width", exact=True).fill("512")
        page.get_by_label("Height", exact=True).fill("512")
        page.get_by_role("button", name="Generate").click()
        error = page.locator("#width-error")
        expect(error).to_contain_text("Too large for this server")
        expect(error).to_contain_text("memory budget")
        log(f"413: {error.text_content()!r}")
        browser.close()
    assert not errors, "\n".join(errors)
    log("basic: user name and password taken by the page's own prompt")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--screenshots", required=True)
    parser.add_argument("--scenario", choices=["page", "auth", "basic"], required=True)
    parser.add_argument("--key")
    parser.add_argument("--basic", help="USER:PASS of --api-auth")
    args = parser.parse_args()
    {"page": scenario_page, "auth": scenario_auth, "basic": scenario_basic}[args.scenario](args)
    log(f"{args.scenario}: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
