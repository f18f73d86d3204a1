// Watching jobs: each submitted job is followed over its event stream until
// it ends; the progress panel shows the newest one (queue position while it
// waits, step, ETA and live preview while it runs), and Cancel cancels it.

import { api, followJob } from "./api.js";

const $ = (id) => document.getElementById(id);

/** Jobs being followed, oldest first: { id, view }. */
const active = [];

function shown() {
  return active.at(-1) || null;
}

function describe(job) {
  switch (job.status) {
    case "queued":
      return job.queue_position > 0
        ? `Queued: ${job.queue_position} job${job.queue_position === 1 ? "" : "s"} ahead.`
        : "Queued: next.";
    case "running": {
      const p = job.progress;
      if (job.cancel_requested) return "Cancelling…";
      if (!p || p.step === 0) return "Starting…";
      const eta = job.eta_seconds != null ? ` · about ${formatSeconds(job.eta_seconds)} left` : "";
      return `Step ${p.step}/${p.total}${eta}`;
    }
    case "succeeded":
      return `Done: ${job.images.length} image${job.images.length === 1 ? "" : "s"} in ${formatSeconds(job.timings?.total ?? 0)}.`;
    case "cancelled":
      return "Cancelled.";
    case "failed":
      return `Failed: ${job.error?.message ?? "unknown error"}`;
    default:
      return job.status;
  }
}

function formatSeconds(s) {
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

function render() {
  const job = shown()?.view;
  const progress = $("progress");
  $("cancel-button").disabled = !job || job.status === "succeeded" || job.cancel_requested;
  if (!job) return;
  $("job-status").textContent = describe(job);
  if (job.progress) {
    progress.max = job.progress.total || 1;
    progress.value = job.progress.step;
  } else {
    progress.removeAttribute("value"); // indeterminate while queued
  }
  const preview = $("live-preview");
  if (job.status === "running" && job.preview) {
    preview.src = job.preview;
    preview.style.aspectRatio = `${job.params.width} / ${job.params.height}`;
    preview.hidden = false;
  }
}

/** Shows a final state once no job is followed any more. */
function finish(job) {
  const preview = $("live-preview");
  preview.hidden = true;
  preview.removeAttribute("src");
  $("job-status").textContent = describe(job);
  const progress = $("progress");
  if (job.status === "succeeded" && job.progress) {
    progress.max = job.progress.total || 1;
    progress.value = job.progress.total;
  }
  $("cancel-button").disabled = true;
}

/**
 * Follows a job until it ends; resolves with its final view (rejects on a
 * broken stream, after which the caller may read the job once more).
 */
export async function watch(accepted) {
  const entry = { id: accepted.id, view: { ...accepted, images: [], params: {} } };
  active.push(entry);
  $("latest").replaceChildren();
  render();
  try {
    const last = await followJob(accepted.id, (_name, job) => {
      entry.view = job;
      if (entry === shown()) render();
    });
    return last ?? (await api("GET", `/api/v1/jobs/${accepted.id}`));
  } catch (error) {
    // The stream broke (a proxy, a restart): read the job's state instead.
    return await api("GET", `/api/v1/jobs/${accepted.id}`).catch(() => {
      throw error;
    });
  } finally {
    active.splice(active.indexOf(entry), 1);
    if (active.length) render();
    else finish(entry.view);
  }
}

/** Cancels the job the panel shows. */
export async function cancelShown() {
  const entry = shown();
  if (!entry) return;
  $("cancel-button").disabled = true;
  $("job-status").textContent = "Cancelling…";
  entry.view = await api("POST", `/api/v1/jobs/${entry.id}/cancel`);
  render();
}

/** True while a job is being followed. */
export function busy() {
  return active.length > 0;
}
