// The page's entry point: loads what the server offers, then wires the form
// (submit, Ctrl+Enter, seeds), the progress panel, the gallery, image to
// image and PNG info together. Each piece lives in its own module.

import { api } from "./api.js";
import * as form from "./form.js";
import * as gallery from "./gallery.js";
import * as images from "./images.js";
import { formValuesOf, readParameters } from "./pnginfo.js";
import { cancelShown, watch } from "./watch.js";

const $ = (id) => document.getElementById(id);

let lastSeed = null;

function setStatus(text) {
  $("server-status").textContent = text;
}

/** The server's models, samplers and limits; waits while the model loads (503). */
async function loadServer() {
  for (;;) {
    try {
      const [{ models }, samplers, limits] = [
        await api("GET", "/api/v1/models"),
        await api("GET", "/api/v1/samplers"),
        await api("GET", "/api/v1/limits"),
      ];
      return { models, samplers, limits };
    } catch (error) {
      if (error.status !== 503) throw error;
      setStatus(`${error.message}. Waiting…`);
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function generate(event) {
  event.preventDefault();
  form.clearErrors();
  const button = $("generate-button");
  button.disabled = true;
  let accepted;
  try {
    const request = { ...form.readRequest(), ...(await images.imageFields()) };
    accepted = await api("POST", "/api/v1/jobs", request);
    form.save();
  } catch (error) {
    form.showApiError(error);
    return;
  } finally {
    button.disabled = false;
  }
  try {
    const job = await watch(accepted);
    if (job.status === "succeeded") {
      gallery.add(job);
      gallery.showLatest(job);
      lastSeed = job.images[0]?.seed ?? lastSeed;
      $("reuse-seed").disabled = lastSeed == null;
    } else if (job.status === "failed") {
      form.showFormError(`The job failed: ${job.error?.message ?? "unknown error"}`);
    }
  } catch (error) {
    form.showApiError(error);
  }
}

/** Reads a dropped or chosen PNG's parameters, shows them and fills the form. */
async function pngInfo(file) {
  const text = await readParameters(await file.arrayBuffer());
  $("pnginfo-text").textContent = text ?? `${file.name}: no parameters in this file.`;
  if (text) form.fill(formValuesOf(text, form.server.samplers));
  $("pnginfo-dialog").showModal();
}

function useSettings(text) {
  form.fill(formValuesOf(text, form.server.samplers));
  $("prompt").focus();
}

async function sendToImg2img(blob) {
  const size = await images.setInitImage(blob);
  form.fill(size);
  $("img2img").scrollIntoView({ block: "nearest" });
}

function setupDropAnywhere() {
  const overlay = $("drop-overlay");
  const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    overlay.hidden = false;
  });
  window.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) overlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    overlay.hidden = true;
    const file = event.dataTransfer?.files?.[0];
    if (file) pngInfo(file).catch((error) => form.showFormError(error.message));
  });
}

function setupControls() {
  $("generate").addEventListener("submit", generate);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("generate").requestSubmit();
    }
  });
  $("cancel-button").addEventListener("click", () =>
    cancelShown().catch((error) => form.showApiError(error)),
  );
  $("random-seed").addEventListener("click", () => {
    $("seed").value = "";
  });
  $("reuse-seed").addEventListener("click", () => {
    if (lastSeed != null) $("seed").value = lastSeed;
  });
  $("pnginfo-file").addEventListener("change", (event) => {
    const file = event.target.files?.[0];
    if (file) pngInfo(file).catch((error) => form.showFormError(error.message));
    event.target.value = "";
  });
  $("pnginfo-close").addEventListener("click", () => $("pnginfo-dialog").close());
  setupDropAnywhere();
}

async function start() {
  setupControls();
  images.setup((error) => form.showFormError(error.message));
  gallery.setup({ use: useSettings, img2img: sendToImg2img });
  try {
    const offer = await loadServer();
    form.setup(offer);
    form.restore();
    const model = offer.models.find((m) => m.default);
    setStatus(`Model: ${model?.id ?? "?"}`);
    await gallery.syncWithServer();
    lastSeed = gallery.latestSeed();
    $("reuse-seed").disabled = lastSeed == null;
  } catch (error) {
    setStatus(`Cannot reach the API: ${error.message}`);
  }
  document.body.dataset.ready = "true";
}

start();
