// Image to image: the init image (chosen, dropped, or sent from the
// gallery) drawn on a canvas, and a mask painted over it with the pointer (or
// uploaded): white repaints, black keeps. Both go to the server as base64
// PNG; an empty mask is no mask.

const $ = (id) => document.getElementById(id);

let init = null; // { base64, width, height }
let maskDrawn = false;

/** Reads a Blob into an ImageBitmap-like object the canvas can draw. */
async function decode(blob) {
  return createImageBitmap(blob);
}

function base64Of(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function refreshState() {
  const state = !init ? "(off)" : maskDrawn ? "(inpainting)" : "(on)";
  $("img2img-state").textContent = state;
  $("canvas-stack").hidden = !init;
  $("drop-hint").hidden = !!init;
}

/**
 * Makes `blob` the init image; PNG and JPEG are sent as they are, other
 * types as a PNG of the decoded pixels. Returns its size.
 */
export async function setInitImage(blob) {
  const bitmap = await decode(blob);
  const canvas = $("init-canvas");
  const mask = $("mask-canvas");
  for (const c of [canvas, mask]) {
    c.width = bitmap.width;
    c.height = bitmap.height;
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  clearMask();
  const sendAsIs = ["image/png", "image/jpeg"].includes(blob.type);
  const bytes = sendAsIs
    ? await blob.arrayBuffer()
    : await (await new Promise((resolve) => canvas.toBlob(resolve, "image/png"))).arrayBuffer();
  init = { base64: base64Of(bytes), width: bitmap.width, height: bitmap.height };
  $("img2img").open = true;
  refreshState();
  return { width: bitmap.width, height: bitmap.height };
}

export function clearMask() {
  const mask = $("mask-canvas");
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, mask.width, mask.height);
  maskDrawn = false;
  refreshState();
}

async function uploadMask(blob) {
  if (!init) throw new Error("Choose an init image first.");
  const bitmap = await decode(blob);
  const mask = $("mask-canvas");
  mask.getContext("2d").drawImage(bitmap, 0, 0, mask.width, mask.height);
  maskDrawn = true;
  refreshState();
}

function removeInit() {
  init = null;
  maskDrawn = false;
  refreshState();
}

/** The request's image fields: none, or init_image (+ mask, strength). */
export async function imageFields() {
  if (!init) return {};
  const fields = { init_image: init.base64 };
  const strength = $("strength").value.trim();
  if (strength !== "") fields.strength = Number(strength);
  if (maskDrawn) {
    const blob = await new Promise((resolve) => $("mask-canvas").toBlob(resolve, "image/png"));
    fields.mask = base64Of(await blob.arrayBuffer());
  }
  return fields;
}

/** Pointer painting on the mask: white strokes, `Brush size` wide (image pixels). */
function setupPainting(onError) {
  const mask = $("mask-canvas");
  let last = null;
  const point = (event) => {
    const box = mask.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * mask.width,
      y: ((event.clientY - box.top) / box.height) * mask.height,
    };
  };
  const stroke = (to) => {
    const ctx = mask.getContext("2d");
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineWidth = Number($("brush").value);
    ctx.beginPath();
    ctx.moveTo((last ?? to).x, (last ?? to).y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    last = to;
    if (!maskDrawn) {
      maskDrawn = true;
      refreshState();
    }
  };
  mask.addEventListener("pointerdown", (event) => {
    mask.setPointerCapture(event.pointerId);
    last = null;
    stroke(point(event));
  });
  mask.addEventListener("pointermove", (event) => {
    if (mask.hasPointerCapture(event.pointerId)) stroke(point(event));
  });
  mask.addEventListener("pointerup", () => {
    last = null;
  });
  const guard = (work) => (event) => {
    const file = event.target.files?.[0];
    if (file) work(file).catch(onError);
    event.target.value = "";
  };
  $("init-file").addEventListener("change", guard(setInitImage));
  $("mask-file").addEventListener("change", guard(uploadMask));
  $("clear-mask").addEventListener("click", clearMask);
  $("remove-init").addEventListener("click", removeInit);
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) setInitImage(file).catch(onError);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("init-file").click();
    }
  });
}

export function setup(onError) {
  setupPainting(onError);
  refreshState();
}
