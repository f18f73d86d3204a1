// The results gallery: this browser's images (kept in localStorage across
// reloads) merged with the jobs the server lists for this caller, newest
// first. A tile opens the viewer: the full image, its infotext read from the
// PNG itself, download, "use these settings", "send to img2img", copy.

import { api, fetchBlob } from "./api.js";
import { readParameters } from "./pnginfo.js";

const HISTORY = "sdserve.history";
/** Unix time of the last "Clear history": older server jobs stay hidden. */
const CLEARED = "sdserve.cleared";
/** Images remembered in this browser. */
const MAX_HISTORY = 200;

const $ = (id) => document.getElementById(id);

/** Image id -> { blob, url }, so a tile, the viewer and a download share one fetch. */
const blobs = new Map();
/** Newest first: { id, job, seed, width, height, created_at }. */
let images = [];
let handlers = { use: () => {}, img2img: () => {} };

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(HISTORY) || "[]");
    return Array.isArray(saved) ? saved.filter((i) => typeof i?.id === "string") : [];
  } catch {
    return [];
  }
}

function store() {
  localStorage.setItem(HISTORY, JSON.stringify(images.slice(0, MAX_HISTORY)));
}

function imagesOf(job) {
  return job.images.map((image) => ({
    id: image.id,
    job: job.id,
    seed: image.seed,
    width: job.params.width,
    height: job.params.height,
    created_at: job.created_at,
  }));
}

/** Adds a finished job's images at the front and shows them. */
export function add(job) {
  const known = new Set(images.map((i) => i.id));
  const fresh = imagesOf(job).filter((i) => !known.has(i.id));
  images = fresh.concat(images).sort((a, b) => b.created_at - a.created_at);
  store();
  render();
}

/** An image's PNG and a blob: URL for it (fetched once). */
async function imageBlob(id) {
  if (!blobs.has(id)) {
    const blob = await fetchBlob(`/api/v1/images/${id}`);
    blobs.set(id, { blob, url: URL.createObjectURL(blob) });
  }
  return blobs.get(id);
}

/** The blob: URL of an image. */
export async function imageUrl(id) {
  return (await imageBlob(id)).url;
}

function forget(id) {
  images = images.filter((i) => i.id !== id);
  store();
  render();
}

/** Fetches an <img>'s image (by its data-id) into its src. */
function fill(img) {
  imageUrl(img.dataset.id)
    .then((url) => {
      img.src = url;
    })
    .catch((error) => {
      // Removed by the server's retention or by its owner: drop it here too.
      if (error.status === 404) forget(img.dataset.id);
      else img.alt = `Could not load: ${error.message}`;
    });
}

/** Gallery tiles load once they come near the screen. */
const lazy = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      lazy.unobserve(entry.target);
      fill(entry.target);
    }
  },
  { rootMargin: "200px" },
);

/** A button showing one image, opening the viewer; `eager` loads it now. */
function tile(image, eager = false) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile";
  button.setAttribute("aria-label", `Open image ${image.width}×${image.height}, seed ${image.seed}`);
  const img = document.createElement("img");
  img.dataset.id = image.id;
  img.alt = `Seed ${image.seed}`;
  img.width = image.width;
  img.height = image.height;
  img.style.aspectRatio = `${image.width} / ${image.height}`;
  if (eager) fill(img);
  else lazy.observe(img);
  button.append(img);
  button.addEventListener("click", () => open(image));
  return button;
}

/** Shows a finished job's images large, in the progress panel. */
export function showLatest(job) {
  $("latest").replaceChildren(...imagesOf(job).map((image) => tile(image, true)));
}

/** The seed of the newest image this browser knows, or null. */
export function latestSeed() {
  return images[0]?.seed ?? null;
}

function render() {
  const list = $("gallery");
  const tiles = images.map((image) => {
    const item = document.createElement("li");
    item.append(tile(image));
    return item;
  });
  list.replaceChildren(...tiles);
  $("gallery-empty").hidden = images.length > 0;
}

let current = null;

async function open(image) {
  current = image;
  const dialog = $("viewer");
  $("viewer-title").textContent = `Seed ${image.seed} · ${image.width}×${image.height}`;
  $("viewer-message").textContent = "";
  $("viewer-infotext").textContent = "";
  const { blob, url } = await imageBlob(image.id);
  $("viewer-image").src = url;
  const download = $("viewer-download");
  download.href = url;
  download.download = `sdserve-${image.seed}-${image.id.slice(0, 8)}.png`;
  dialog.showModal();
  const text = await readParameters(await blob.arrayBuffer());
  $("viewer-infotext").textContent = text ?? "(no parameters in this PNG)";
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain http on another host: the older path still works.
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}

/**
 * Wires the viewer's actions: `use(infotext)` fills the form, `img2img(blob,
 * image)` makes the image the init image.
 */
export function setup(actions) {
  handlers = actions;
  images = load();
  render();
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer-use").addEventListener("click", () => {
    handlers.use($("viewer-infotext").textContent);
    $("viewer").close();
  });
  $("viewer-img2img").addEventListener("click", async () => {
    const { blob } = await imageBlob(current.id);
    await handlers.img2img(blob, current);
    $("viewer").close();
  });
  $("viewer-copy").addEventListener("click", async () => {
    try {
      await copyText($("viewer-infotext").textContent);
      $("viewer-message").textContent = "Infotext copied.";
    } catch (error) {
      $("viewer-message").textContent = `Could not copy: ${error.message}`;
    }
  });
  $("clear-history").addEventListener("click", () => {
    localStorage.setItem(CLEARED, String(Date.now() / 1000));
    images = [];
    store();
    render();
  });
}

/** Adds the server's list of this caller's finished jobs (after a reload, another browser). */
export async function syncWithServer() {
  const { jobs } = await api("GET", "/api/v1/jobs?limit=100");
  const cleared = Number(localStorage.getItem(CLEARED) || 0);
  const shown = jobs.filter((j) => j.status === "succeeded" && j.created_at > cleared);
  for (const job of shown.reverse()) add(job);
}
