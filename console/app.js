// The console: vanilla JavaScript, no build step, no third-party code. It calls the service's public API
// (the same requests as the CLI or curl) with the key typed into the page, which stays in sessionStorage.
"use strict";

(function () {
  const KEY_STORAGE = "flux-console-api-key";
  const POLL_MS = 1000;
  const MAX_JOB_ITEMS = 1000; // POST /v1/jobs takes 1-1,000 items
  const FIELDS = ["prompt", "width", "height", "num_steps", "seed"];
  const INTEGER_FIELDS = new Set(["width", "height", "num_steps", "seed"]);

  const $ = (id) => document.getElementById(id);
  const apiBase = (document.querySelector('meta[name="api-base"]').content || "").replace(/\/+$/, "");

  // ------------------------------------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, info) {
      super(info.message || `HTTP ${status}`);
      this.status = status;
      this.code = info.code || "error";
      this.details = Array.isArray(info.details) ? info.details : [];
      this.requestId = info.request_id || null;
    }
  }

  async function api(method, path, body) {
    const key = sessionStorage.getItem(KEY_STORAGE) || "";
    if (!key) {
      throw new ApiError(0, { code: "no_api_key", message: "Type your API key at the top of the page first." });
    }
    const headers = { "x-api-key": key };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(apiBase + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (exc) {
      throw new ApiError(0, {
        code: "unreachable",
        message:
          `The API at ${apiBase || window.location.origin} could not be reached, or it refused this page's ` +
          `origin (CORS). (${exc.message})`,
      });
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) {
      payload = null;
    }
    if (!response.ok) {
      const info = (payload && payload.error) || {
        code: `http_${response.status}`,
        message: (payload && payload.message) || response.statusText || "no message",
      };
      throw new ApiError(response.status, info);
    }
    return payload;
  }

  // ------------------------------------------------------------------------------------------- errors
  function describe(error) {
    if (!(error instanceof ApiError)) return `Unexpected error in the console: ${error.message}`;
    let text = error.status ? `${error.status} ${error.code}: ${error.message}` : error.message;
    if (error.code === "invalid_api_key") text += " — check the API key at the top of the page.";
    if (error.requestId) text += ` (request id ${error.requestId})`;
    return text;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = describe(error);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function clearFieldErrors(form) {
    form.querySelectorAll(".field-error").forEach((node) => {
      node.hidden = true;
      node.textContent = "";
    });
    form.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
  }

  function showFieldError(form, name, message) {
    const node = form.querySelector(`.field-error[data-for="${name}"]`);
    if (!node) return false;
    node.textContent = node.textContent ? `${node.textContent}; ${message}` : message;
    node.hidden = false;
    const input = form.querySelector(`[name="${name}"]`);
    if (input) input.setAttribute("aria-invalid", "true");
    return true;
  }

  // A 422's details name each failing field (``width``, ``items.3.prompt``): each message goes next to its field,
  // and the error banner keeps the API's own summary.
  function showValidation(form, error, fieldOf) {
    for (const detail of error.details) {
      const name = fieldOf(detail.field || "");
      if (name) showFieldError(form, name, detail.message);
    }
  }

  // ------------------------------------------------------------------------------------------- request bodies
  // Numbers are sent as typed: "4" becomes 4, anything else ("4.5", "ten") goes as written so the API's
  // validation names the field and the reason (the console does not second-guess the service's rules).
  function fieldValue(name, raw) {
    const text = raw.trim();
    if (!INTEGER_FIELDS.has(name)) return raw;
    if (/^-?\d+$/.test(text)) return Number(text);
    if (text !== "" && !Number.isNaN(Number(text))) return Number(text);
    return text;
  }

  function imageRequest(form) {
    const body = {};
    for (const name of FIELDS) {
      const raw = form.elements[name].value;
      if (name !== "prompt" && raw.trim() === "") continue; // omitted: the service's default
      body[name] = fieldValue(name, raw);
    }
    return body;
  }

  function parseCsvLine(line) {
    const cells = [];
    let cell = "";
    let quoted = false;
    for (let i = 0; i < line.length; i += 1) {
      const char = line[i];
      if (quoted) {
        if (char === '"' && line[i + 1] === '"') {
          cell += '"';
          i += 1;
        } else if (char === '"') {
          quoted = false;
        } else {
          cell += char;
        }
      } else if (char === '"') {
        quoted = true;
      } else if (char === ",") {
        cells.push(cell);
        cell = "";
      } else {
        cell += char;
      }
    }
    cells.push(cell);
    return cells;
  }

  function itemsFromFile(name, text) {
    const lines = text.split(/\r?\n/).filter((line) => line.trim() !== "");
    if (/\.csv$/i.test(name)) {
      const header = parseCsvLine(lines.shift() || "").map((cell) => cell.trim());
      if (!header.includes("prompt")) throw new Error("the CSV's header row must name a prompt column");
      return lines.map((line) => {
        const cells = parseCsvLine(line);
        const item = {};
        header.forEach((column, i) => {
          const value = cells[i] === undefined ? "" : cells[i];
          if (column === "prompt" || value.trim() !== "") item[column] = fieldValue(column, value);
        });
        return item;
      });
    }
    return lines.map((line, i) => {
      try {
        return JSON.parse(line);
      } catch (exc) {
        throw new Error(`line ${i + 1} is not JSON (${exc.message})`);
      }
    });
  }

  function itemsFromPrompts(text) {
    const shared = imageRequest($("generate-form"));
    delete shared.prompt;
    delete shared.seed; // each item gets its own random seed
    return text
      .split(/\r?\n/)
      .filter((line) => line.trim() !== "")
      .map((prompt) => ({ ...shared, prompt: prompt.trim() }));
  }

  // ------------------------------------------------------------------------------------------- generate
  function caption(parameters) {
    return (
      `${parameters.prompt} — ${parameters.width}×${parameters.height}, ` +
      `${parameters.num_steps} steps, seed ${parameters.seed}`
    );
  }

  async function generate(event) {
    event.preventDefault();
    const form = $("generate-form");
    clearError();
    clearFieldErrors(form);
    const status = $("generate-status");
    status.textContent = "Generating…";
    $("generate-button").disabled = true;
    try {
      const document_ = await api("POST", "/v1/images", imageRequest(form));
      const image = $("result-image");
      image.alt = document_.parameters.prompt;
      image.dataset.id = document_.id;
      image.src = document_.image.url;
      $("result-caption").textContent = caption(document_.parameters);
      $("result").hidden = false;
      status.textContent = `Done in ${document_.timings.total_ms} ms`;
    } catch (error) {
      status.textContent = "";
      if (error instanceof ApiError && error.status === 422) {
        showValidation(form, error, (field) => (FIELDS.includes(field) ? field : null));
      }
      showError(error);
    } finally {
      $("generate-button").disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------------- jobs
  let currentJob = null; // {id, timer, shown: Set of item indexes in the gallery}

  async function submitJob(event) {
    event.preventDefault();
    const form = $("job-form");
    clearError();
    clearFieldErrors(form);
    let items;
    const file = $("job-file").files[0];
    try {
      items = file ? itemsFromFile(file.name, await file.text()) : itemsFromPrompts($("prompts").value);
    } catch (exc) {
      showFieldError(form, "file", exc.message);
      return;
    }
    if (items.length === 0) {
      showFieldError(form, "items", "type at least one prompt, or choose a file");
      return;
    }
    if (items.length > MAX_JOB_ITEMS) {
      showFieldError(form, file ? "file" : "items", `${items.length} items: a job takes at most ${MAX_JOB_ITEMS}`);
      return;
    }
    $("job-button").disabled = true;
    try {
      const job = await api("POST", "/v1/jobs", { items });
      startWatching(job);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) {
        // items.3.width → the list (or the file) it came from, prefixed with the line number
        for (const detail of error.details) {
          const match = /^items\.(\d+)\.?(.*)$/.exec(detail.field || "");
          const where = match ? `item ${Number(match[1]) + 1}${match[2] ? ` (${match[2]})` : ""}: ` : "";
          showFieldError(form, file ? "file" : "items", where + detail.message);
        }
      }
      showError(error);
    } finally {
      $("job-button").disabled = false;
    }
  }

  function startWatching(job) {
    if (currentJob && currentJob.timer) clearTimeout(currentJob.timer);
    currentJob = { id: job.id, timer: null, shown: new Set() };
    $("gallery").replaceChildren();
    $("progress").hidden = false;
    $("cancel-button").hidden = false;
    $("cancel-button").disabled = false;
    render(job);
    poll();
  }

  const TERMINAL = new Set(["succeeded", "partially_failed", "failed", "canceled"]);

  async function poll() {
    const watched = currentJob;
    if (!watched) return;
    let job;
    try {
      job = await api("GET", `/v1/jobs/${encodeURIComponent(watched.id)}?limit=100`);
    } catch (error) {
      showError(error);
      watched.timer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    if (watched !== currentJob) return;
    render(job);
    // A canceled job is final at once, but its queued items settle (canceled) a moment later: watch until then.
    if (TERMINAL.has(job.status) && job.counts.queued === 0 && job.counts.running === 0) {
      await fillGallery(job, watched);
      $("cancel-button").hidden = true;
      return;
    }
    watched.timer = setTimeout(poll, POLL_MS);
  }

  // A finished job: the pages after the first one too (the live view shows the first page's images).
  async function fillGallery(job, watched) {
    let cursor = job.next_cursor;
    while (cursor && watched === currentJob) {
      const page = await api("GET", `/v1/jobs/${encodeURIComponent(watched.id)}?limit=100&cursor=${encodeURIComponent(cursor)}`);
      addImages(page.items, watched);
      cursor = page.next_cursor;
    }
  }

  function render(job) {
    const counts = job.counts;
    const settled = counts.succeeded + counts.failed + counts.canceled;
    const percent = job.total ? Math.round((100 * settled) / job.total) : 0;
    $("job-id").textContent = job.id;
    $("job-status").textContent = job.status;
    $("bar-fill").style.width = `${percent}%`;
    const bar = document.querySelector("#progress .bar");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.dataset.percent = String(percent);
    $("job-counts").textContent =
      `${percent}% — ${settled} of ${job.total} settled: ${counts.succeeded} succeeded, ${counts.failed} failed, ` +
      `${counts.canceled} canceled, ${counts.running} running, ${counts.queued} queued`;
    addImages(job.items, currentJob);
  }

  function addImages(items, watched) {
    if (!watched) return;
    for (const item of items || []) {
      if (watched.shown.has(item.index)) continue;
      if (item.image) {
        watched.shown.add(item.index);
        $("gallery").appendChild(tile(item));
      } else if (item.status === "failed" && item.error) {
        watched.shown.add(item.index);
        $("gallery").appendChild(failedTile(item));
      }
    }
  }

  function tile(item) {
    const image = item.image;
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.dataset.index = String(item.index);
    const img = document.createElement("img");
    img.src = image.image.url;
    img.alt = image.parameters.prompt;
    img.loading = "lazy";
    const text = document.createElement("figcaption");
    text.textContent = `#${item.index + 1} ${caption(image.parameters)}`;
    const download = document.createElement("a");
    download.href = image.image.url;
    download.download = `${image.id}.${(image.image.content_type || "image/png").split("/")[1]}`;
    download.target = "_blank";
    download.rel = "noopener";
    download.textContent = "Download";
    text.append(" ", download);
    figure.append(img, text);
    return figure;
  }

  function failedTile(item) {
    const figure = document.createElement("figure");
    figure.className = "tile failed";
    figure.dataset.index = String(item.index);
    const text = document.createElement("figcaption");
    text.textContent = `#${item.index + 1} failed — ${item.error.code}: ${item.error.message}`;
    figure.append(text);
    return figure;
  }

  async function cancelJob() {
    if (!currentJob) return;
    clearError();
    $("cancel-button").disabled = true;
    try {
      const job = await api("DELETE", `/v1/jobs/${encodeURIComponent(currentJob.id)}`);
      render(job);
    } catch (error) {
      showError(error);
      $("cancel-button").disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------------- start
  function start() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORAGE) || "";
    key.addEventListener("input", () => {
      const value = key.value.trim();
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      else sessionStorage.removeItem(KEY_STORAGE);
    });
    $("key-form").addEventListener("submit", (event) => event.preventDefault());
    $("generate-form").addEventListener("submit", generate);
    $("job-form").addEventListener("submit", submitJob);
    $("cancel-button").addEventListener("click", cancelJob);
    $("docs-link").href = `${apiBase}/docs`;
  }

  start();
})();
