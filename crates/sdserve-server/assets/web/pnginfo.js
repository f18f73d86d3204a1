// PNG info: the A1111 `parameters` text of a PNG (tEXt, zTXt or iTXt chunk,
// as A1111, PIL and sdserve write it), and that infotext parsed into
// settings the form understands. A port of A1111's
// parse_generation_parameters, kept to the keys this server can use.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
/** Chunks read before giving up on finding the text (a bomb guard). */
const MAX_CHUNKS = 4096;

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The `parameters` text of a PNG's bytes, or null (not a PNG, or none). */
export async function readParameters(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  let at = 8;
  for (let n = 0; n < MAX_CHUNKS && at + 8 <= bytes.length; n++) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, Math.min(at + 8 + length, bytes.length));
    at += 12 + length;
    if (type === "IEND") break;
    if (!["tEXt", "zTXt", "iTXt"].includes(type)) continue;
    const nul = data.indexOf(0);
    if (nul < 0 || latin1.decode(data.subarray(0, nul)) !== "parameters") continue;
    const rest = data.subarray(nul + 1);
    if (type === "tEXt") return latin1.decode(rest);
    if (type === "zTXt") return latin1.decode(await inflate(rest.subarray(1)));
    // iTXt: compression flag, method, language\0, translated keyword\0, text.
    const compressed = rest[0] === 1;
    const language = rest.indexOf(0, 2);
    const translated = rest.indexOf(0, language + 1);
    if (language < 0 || translated < 0) return null;
    const text = rest.subarray(translated + 1);
    return utf8.decode(compressed ? await inflate(text) : text);
  }
  return null;
}

// One `Key: value` of the settings line; values may be quoted.
const PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

function unquote(value) {
  if (!value.startsWith('"') || !value.endsWith('"')) return value;
  try {
    return JSON.parse(value);
  } catch {
    return value;
  }
}

/**
 * Splits an infotext into `prompt`, `negative_prompt` and the settings line's
 * keys as written (`Steps`, `Sampler`, `Schedule type`, `CFG scale`, `Seed`,
 * `Size`, `Model`, `Denoising strength`...).
 */
export function parseInfotext(text) {
  const lines = text.trim().split("\n");
  let settings = {};
  const last = lines.at(-1) || "";
  const found = [...last.matchAll(PARAM)];
  if (found.length >= 3) {
    lines.pop();
    settings = Object.fromEntries(found.map((m) => [m[1].trim(), unquote(m[2].trim())]));
  }
  const prompt = [];
  const negative = [];
  let inNegative = false;
  for (const line of lines) {
    if (!inNegative && line.startsWith("Negative prompt:")) {
      inNegative = true;
      negative.push(line.slice("Negative prompt:".length).trim());
    } else {
      (inNegative ? negative : prompt).push(line);
    }
  }
  return { prompt: prompt.join("\n").trim(), negative_prompt: negative.join("\n").trim(), settings };
}

/**
 * The form values an infotext stands for (only those it names), with the
 * sampler matched against the server's list (A1111 1.9+ names it in two
 * keys, older versions fold the schedule into the name).
 */
export function formValuesOf(text, samplers) {
  const { prompt, negative_prompt, settings } = parseInfotext(text);
  const values = { prompt, negative_prompt };
  const number = (key) => {
    const n = Number(settings[key]);
    return key in settings && Number.isFinite(n) ? n : undefined;
  };
  values.steps = number("Steps");
  values.cfg_scale = number("CFG scale");
  values.seed = number("Seed");
  // A1111 names its emphasis only when it is not the default ("Original").
  values.prompt_syntax = settings.Emphasis === "None" ? "plain" : "a1111";
  const clipSkip = number("Clip skip");
  values.clip_skip = clipSkip === undefined ? 0 : Math.max(clipSkip - 1, 0);
  if ("Hires upscaler" in settings) {
    // A hires job: the strength is its second pass's.
    values.hires = {
      scale: number("Hires upscale"),
      upscaler: settings["Hires upscaler"],
      steps: number("Hires steps") ?? 0,
      denoising_strength: number("Denoising strength"),
    };
  } else {
    values.strength = number("Denoising strength");
  }
  const size = /^(\d+)x(\d+)$/.exec(settings.Size || "");
  if (size) [values.width, values.height] = [Number(size[1]), Number(size[2])];
  if (settings.Model) values.model = settings.Model;
  if (settings["Model hash"]) values.model_hash = settings["Model hash"];
  if (settings.Sampler) {
    // A1111 before 1.9 folded the schedule into the name ("DPM++ 2M Karras").
    let name = settings.Sampler;
    let schedule = settings["Schedule type"] || "Automatic";
    let sampler = samplers.find((s) => s.label === name);
    for (const folded of ["Karras", "Exponential"]) {
      if (!sampler && name.endsWith(` ${folded}`)) {
        name = name.slice(0, -folded.length - 1);
        sampler = samplers.find((s) => s.label === name);
        if (sampler && !settings["Schedule type"]) schedule = folded;
      }
    }
    if (sampler) {
      values.sampler = sampler.id;
      const type = sampler.schedule_types.find((t) => t.label.toLowerCase() === schedule.toLowerCase());
      values.schedule_type = type ? type.id : "automatic";
    }
  }
  for (const key of Object.keys(values)) if (values[key] === undefined) delete values[key];
  return values;
}
