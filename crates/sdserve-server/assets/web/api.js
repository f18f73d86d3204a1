// The native API, as the page uses it: JSON requests with the session's
// credentials, one sign-in prompt on a 401 (then the request is retried),
// errors as ApiError with the server's message, field and Retry-After, and a
// job's server-sent events read over fetch (EventSource cannot send the
// Authorization header a key needs).

import { askCredentials, authorization, forgetCredentials } from "./auth.js";

/** An error answer of the server, shaped as the native dialect writes it. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.error || `the server answered ${status}`);
    this.status = status;
    this.field = body?.field || null;
    this.type = body?.error_type || null;
    this.retryAfter = retryAfter;
  }
}

/** fetch with the session's credentials; on 401 asks for them and retries. */
export async function authorizedFetch(path, options = {}) {
  let refused = false;
  for (;;) {
    const headers = new Headers(options.headers || {});
    // The server then names Basic `xBasic`, so the browser leaves the
    // prompt to the page (see auth.rs).
    headers.set("X-Requested-With", "XMLHttpRequest");
    const auth = authorization();
    if (auth) headers.set("Authorization", auth);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (auth) forgetCredentials();
    const challenge = response.headers.get("WWW-Authenticate") || "";
    // Throws when the person closes the prompt.
    await askCredentials({ basic: /^x?basic/i.test(challenge), refused: refused || !!auth });
    refused = true;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, body, Number.isFinite(retry) ? retry : null);
}

/** A JSON request; resolves to the parsed answer, rejects with ApiError. */
export async function api(method, path, body) {
  const options = { method };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  const response = await authorizedFetch(path, options);
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

/** An image of the server as a blob (an <img> cannot send a key). */
export async function fetchBlob(path) {
  const response = await authorizedFetch(path);
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

/**
 * Follows a job's events until it ends: `onEvent(name, job)` for each
 * `state` and `progress` event. Resolves with the last job seen.
 */
export async function followJob(id, onEvent, signal) {
  const response = await authorizedFetch(`/api/v1/jobs/${id}/events`, {
    headers: { Accept: "text/event-stream" },
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value;
    // Events end with a blank line; a partial one waits for the next chunk.
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const event = parseEvent(block);
      if (event && event.data) {
        last = JSON.parse(event.data);
        onEvent(event.name, last);
      }
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return { name, data: data.join("\n") };
}
