// The generate form: built from the server's models, samplers and limits;
// read into a native job request; filled from saved settings or an image's
// infotext; and the server's error shown next to the field it names. The
// form is never cleared by a failure.

const FIELDS = ["prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "seed", "batch_size"];
const SAVED = "sdserve.form";

const $ = (id) => document.getElementById(id);

/** What the page knows about the server, filled by `setup`. */
export const server = { models: [], samplers: [], limits: null };

/** Fills the selects and bounds from the server's listings. */
export function setup({ models, samplers, limits }) {
  Object.assign(server, { models, samplers, limits });
  const modelSelect = $("model");
  modelSelect.replaceChildren(
    ...models.map((m) => new Option(m.loaded ? m.id : `${m.id} (not loaded)`, m.id, m.default, m.default)),
  );
  $("model-field").hidden = models.length < 2;
  $("sampler").replaceChildren(...samplers.map((s) => new Option(s.label, s.id)));
  $("sampler").value = samplerOf("euler_ancestral")?.id ?? samplers[0]?.id;
  refreshSchedules();
  $("sampler").addEventListener("change", refreshSchedules);
  modelSelect.addEventListener("change", () => applyModelDefaults(true));
  $("steps").max = limits.max_steps;
  $("batch_size").max = limits.max_batch;
  $("width").max = limits.max_width;
  $("height").max = limits.max_height;
  $("prompt").maxLength = limits.max_prompt_chars;
  $("negative_prompt").maxLength = limits.max_prompt_chars;
  applyModelDefaults(false);
  for (const id of FIELDS.concat(["strength", "model", "sampler", "hires.scale", "hires.steps", "hires.denoising_strength"])) {
    $(id).addEventListener("input", () => showFieldError(id, null));
  }
  $("hires-on").addEventListener("change", showHiresState);
}

function samplerOf(id) {
  return server.samplers.find((s) => s.id === id);
}

/** The schedule types the chosen sampler runs with; the choice is kept where it can be. */
function refreshSchedules() {
  const schedules = samplerOf($("sampler").value)?.schedule_types ?? [];
  const chosen = $("schedule").value;
  $("schedule").replaceChildren(...schedules.map((s) => new Option(s.label, s.id)));
  if (schedules.some((s) => s.id === chosen)) $("schedule").value = chosen;
  $("schedule").disabled = schedules.length < 2;
}

/** The chosen model's listing (or the default's, whose facts are known). */
function chosenModel() {
  const chosen = server.models.find((m) => m.id === $("model").value);
  const fallback = server.models.find((m) => m.default);
  return chosen?.native_width ? chosen : fallback || chosen;
}

/** Steps, guidance and size presets from the chosen model; `force` overwrites set values. */
function applyModelDefaults(force) {
  const model = chosenModel();
  if (!model) return;
  const set = (id, value) => {
    if (value != null && (force || $(id).value === "")) $(id).value = value;
  };
  set("steps", model.default_steps);
  set("cfg_scale", model.default_cfg_scale);
  set("width", model.native_width);
  set("height", model.native_height);
  const multiple = model.vae_scale_factor || 8;
  $("width").step = multiple;
  $("height").step = multiple;
  renderPresets(model, multiple);
}

/** Square, portrait and landscape sizes around the model's native area. */
function renderPresets(model, multiple) {
  const { max_width, max_height, max_pixels, largest_square } = server.limits;
  const base = model.native_width || 512;
  const round = (v) => Math.max(multiple, Math.round(v / multiple) * multiple);
  const sizes = [
    [base, base],
    [round(base * 0.75), base],
    [base, round(base * 0.75)],
    [round(base * 0.5625), base],
    [base, round(base * 0.5625)],
    [base * 2, base * 2],
  ];
  const seen = new Set();
  const buttons = [];
  for (const [w, h] of sizes) {
    const key = `${w}x${h}`;
    if (seen.has(key) || w > max_width || h > max_height || w * h > max_pixels) continue;
    seen.add(key);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = key;
    button.addEventListener("click", () => {
      $("width").value = w;
      $("height").value = h;
    });
    buttons.push(button);
  }
  $("presets").replaceChildren(...buttons);
  const memory = largest_square ? `; fits in memory up to ${largest_square}×${largest_square}` : "";
  $("size-hint").textContent =
    `Multiples of ${multiple}, at most ${max_width}×${max_height} and ${max_pixels.toLocaleString()} pixels${memory}.`;
}

function numberOf(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

/** The native request the form stands for (image fields added by the caller). */
export function readRequest() {
  const request = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    sampler: $("sampler").value || undefined,
    schedule_type: $("schedule").value || undefined,
    steps: numberOf("steps"),
    cfg_scale: numberOf("cfg_scale"),
    width: numberOf("width"),
    height: numberOf("height"),
    seed: numberOf("seed"),
    batch_size: numberOf("batch_size"),
    prompt_syntax: $("prompt_syntax").value,
  };
  // The field shows A1111's "Clip skip" (1: off); the API takes diffusers' clip_skip.
  const clipSkip = numberOf("clip_skip");
  if (clipSkip !== undefined && clipSkip > 1) request.clip_skip = clipSkip - 1;
  if (server.models.length > 1) request.model = $("model").value;
  if ($("hires-on").checked) {
    request.hires = {
      scale: numberOf("hires.scale"),
      upscaler: $("hires.upscaler").value,
      steps: numberOf("hires.steps"),
      denoising_strength: numberOf("hires.denoising_strength"),
    };
  }
  for (const key of Object.keys(request)) if (request[key] === undefined) delete request[key];
  return request;
}

/** The hires fix's summary line follows its checkbox. */
function showHiresState() {
  $("hires-state").textContent = $("hires-on").checked ? "(on)" : "(off)";
}

/** Fills the fields `values` names (keys as in a native request). */
export function fill(values) {
  for (const id of FIELDS) {
    if (values[id] !== undefined && values[id] !== null) $(id).value = values[id];
  }
  if (values.strength !== undefined) $("strength").value = values.strength;
  if (values.prompt_syntax) $("prompt_syntax").value = values.prompt_syntax;
  if (values.clip_skip !== undefined) $("clip_skip").value = Number(values.clip_skip) + 1;
  $("hires-on").checked = Boolean(values.hires);
  if (values.hires) {
    for (const key of ["scale", "upscaler", "steps", "denoising_strength"]) {
      if (values.hires[key] != null) $(`hires.${key}`).value = values.hires[key];
    }
  }
  showHiresState();
  if (values.model) {
    const model = server.models.find((m) => m.id === values.model || m.sha256?.startsWith(values.model_hash || "\u0000"));
    if (model) $("model").value = model.id;
  }
  const sampler = values.sampler && samplerOf(values.sampler);
  if (sampler) {
    $("sampler").value = sampler.id;
    refreshSchedules();
    if (sampler.schedule_types.some((s) => s.id === values.schedule_type)) {
      $("schedule").value = values.schedule_type;
    }
  }
  clearErrors();
}

/** Keeps the form across reloads (not the images). */
export function save() {
  const values = readRequest();
  values.seed = $("seed").value;
  localStorage.setItem(SAVED, JSON.stringify(values));
}

/** The form as last saved. */
export function restore() {
  try {
    const values = JSON.parse(localStorage.getItem(SAVED) || "null");
    if (values) fill(values);
  } catch {
    localStorage.removeItem(SAVED);
  }
}

/** Shows `message` under the field `field` (null clears it); false if no such field. */
export function showFieldError(field, message) {
  const slot = $(`${field}-error`);
  if (!slot) return false;
  slot.textContent = message || "";
  const input = $(field);
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    if (message) input.setAttribute("aria-describedby", slot.id);
  }
  return true;
}

/** The form-wide message (null clears it). */
export function showFormError(message) {
  $("form-error").textContent = message || "";
}

export function clearErrors() {
  for (const slot of document.querySelectorAll(".field-error")) {
    showFieldError(slot.id.replace(/-error$/, ""), null);
  }
  showFormError(null);
}

/**
 * Shows an ApiError where it belongs: beside its field (which gets focus) when
 * the server names one the form has, else as the form's message.
 */
export function showApiError(error) {
  let message = error.message;
  if (error.status === 429) {
    const wait = error.retryAfter != null ? ` Retry in ${error.retryAfter} s.` : "";
    message = `The server is busy: ${error.message}.${wait}`;
  } else if (error.status === 413) {
    message = `Too large for this server: ${error.message}`;
  }
  const field = error.field && error.field.split(/[.[]/)[0];
  if (field && showFieldError(field, message)) {
    const input = $(field);
    if (input && input.closest("details")) input.closest("details").open = true;
    input?.focus();
    return;
  }
  showFormError(message);
}
