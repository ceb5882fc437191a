// The search page: text box, image upload / drag and drop, results grid; clicking a result searches with it.
// Plain browser JavaScript, no build step. All data goes into the page through textContent / attributes, never innerHTML.
// Texts from the corpus or the visitor may be in any script: each is rendered with dir="auto" (or in a <bdi>), so an
// Arabic or Hebrew text runs right to left and an English one left to right, whatever the page around it.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("text-form"), query: $("query"), target: $("target"), label: $("label"), k: $("k"),
  drop: $("drop"), file: $("file"), preview: $("preview"), message: $("message"), results: $("results"), version: $("version"),
};
let previewUrl = null;

// A message is a string or a list of parts: strings, and {isolate: text} for words from the query or the corpus, put
// in a <bdi> so that a right-to-left query does not reorder the English sentence around it.
function showMessage(parts, isError = false) {
  els.message.replaceChildren(...(Array.isArray(parts) ? parts : [parts]).map((part) => {
    if (typeof part === "string") return document.createTextNode(part);
    const bdi = document.createElement("bdi");
    bdi.textContent = part.isolate;
    return bdi;
  }));
  els.message.classList.toggle("error", isError);
}

// What went wrong, in words a visitor can act on; the service's own detail follows for the curious.
const PLAIN_ERRORS = {
  image_too_large: "That picture is too large. Try a smaller or downscaled copy.",
  not_an_image: "That file is not a picture we can read. Try a JPEG, PNG, GIF or WebP image.",
  invalid_image: "That picture could not be read: it may be damaged, or too big or too oddly shaped.",
  unsupported_media_type: "That file type is not accepted. Choose a picture file.",
  text_too_long: "That query is too long. Try a shorter description.",
  empty_text: "Type a word or a sentence first.",
  unknown_label: "That label is not in this collection any more. Choose another one.",
  unsupported_target: "This collection cannot answer with that kind of result. Choose another one under “Find”.",
  unsupported_query: "This collection cannot be searched that way.",
  not_ready: "The search service is still starting. Try again in a moment.",
  body_too_large: "That upload is too large. Try a smaller picture.",
};

function failure(err) {
  // A failed search leaves nothing stale on the page: no old results, no old preview.
  els.results.replaceChildren();
  clearPreview();
  showMessage(err.message, true);
}

function options(defaultTarget) {
  const target = els.target.value === "auto" ? defaultTarget : els.target.value;
  const labels = els.label.value ? [els.label.value] : null;
  return { k: Number(els.k.value), target, labels };
}

async function callApi(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new Error(`The search service cannot be reached. Check your connection and try again (${err.message}).`);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* non-JSON body: reported below */ }
  if (!response.ok) {
    const plain = body && PLAIN_ERRORS[body.error];
    const detail = body && body.detail;
    if (plain) throw new Error(detail ? `${plain} (${detail})` : plain);
    throw new Error(detail ? `Something went wrong: ${detail}` : `Something went wrong (the service answered ${response.status}).`);
  }
  return body;
}

// The query lives in the address (?q=... or ?item=<id> for "more like this picture"), so Back and shared links work.
function remember(params, replace = false) {
  const url = new URL(window.location.href);
  url.search = "";
  for (const [key, value] of Object.entries(params)) if (value) url.searchParams.set(key, value);
  if (url.href === window.location.href) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

function optionParams() {
  return { target: els.target.value === "auto" ? "" : els.target.value, label: els.label.value, k: els.k.value === "20" ? "" : els.k.value };
}

async function searchText(text, record = true) {
  const query = text.trim();
  if (!query) { failure(new Error(PLAIN_ERRORS.empty_text)); return; }
  if (record) remember({ q: query, ...optionParams() });
  clearPreview();
  showMessage("Searching…");
  const opts = options("image");
  const body = { text: query, k: opts.k, target: opts.target };
  if (opts.labels) body.labels = opts.labels;
  try {
    const data = await callApi("/search/text", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    render(data, ["“", { isolate: query }, "”"]);
  } catch (err) {
    failure(err);
  }
}

async function searchImage(blob, name) {
  showMessage("Searching…");
  setPreview(blob);
  const opts = options("text");
  const form = new FormData();
  form.append("file", blob, name || "image");
  form.append("k", String(opts.k));
  form.append("target", opts.target);
  if (opts.labels) opts.labels.forEach((label) => form.append("labels", label));
  try {
    const data = await callApi("/search/image", { method: "POST", body: form });
    render(data, name ? ["the image ", { isolate: name }] : ["the image"]);
  } catch (err) {
    failure(err);
  }
}

function setPreview(blob) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  els.preview.src = previewUrl;
  els.preview.hidden = false;
}

function clearPreview() {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  els.preview.removeAttribute("src");
  els.preview.hidden = true;
}

const QUERY_PROBLEMS = {
  no_known_words: "No results: the model knows none of these words. Try other words.",
  degenerate_vector: "No results: the model cannot tell this text apart from others. Try more or other words.",
};

function render(data, what) {
  els.results.replaceChildren(...data.results.map(card));
  const n = data.results.length;
  const unknown = data.unknown_words || [];
  const problem = QUERY_PROBLEMS[data.query_problem] || "";
  const parts = problem ? [`${problem} `] : [`${n} result${n === 1 ? "" : "s"} for `, ...what, ` in ${data.took_ms.toFixed(1)} ms`];
  if (unknown.length) {
    parts.push(`${problem ? "W" : "; w"}ords the model does not know: `);
    unknown.forEach((word, i) => parts.push(...(i ? [", "] : []), { isolate: word }));
  }
  showMessage(parts);
  showVersion(data.model_hash, data.index_version);
}

function card(hit) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = `result result-${hit.modality}`;
  el.dataset.id = hit.id;
  if (hit.modality === "image") {
    const img = document.createElement("img");
    img.src = hit.thumbnail_url;
    img.alt = hit.caption || hit.id;
    img.loading = "lazy";
    el.append(img);
    if (hit.caption) {
      const caption = document.createElement("p");
      caption.className = "caption";
      caption.dir = "auto";
      caption.textContent = hit.caption;
      el.append(caption);
    }
    el.title = "Search with this image";
    el.addEventListener("click", () => searchWithImageOf(hit.id, hit.image_url));
  } else {
    const p = document.createElement("p");
    p.className = "snippet";
    p.dir = "auto";
    p.textContent = hit.text;
    el.append(p);
    el.title = "Search with this text";
    el.addEventListener("click", () => { els.query.value = hit.text; searchText(hit.text); });
  }
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${hit.score.toFixed(3)}`;
  const labels = document.createElement("span");
  labels.className = "labels";
  for (const name of hit.labels) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dir = "auto";
    chip.textContent = name;
    labels.append(chip);
  }
  el.append(score, labels);
  return el;
}

async function searchWithImageOf(id, imageUrl, record = true) {
  if (record) remember({ item: id, ...optionParams() });
  try {
    const response = await fetch(imageUrl || `/media/${encodeURIComponent(id)}`);
    if (!response.ok) throw new Error(`The picture of ${id} is not available any more (the service answered ${response.status}).`);
    await searchImage(await response.blob(), id);
  } catch (err) {
    failure(err);
  }
}

// Run the search the address describes (on load, and when Back / Forward move through earlier searches).
function searchFromAddress() {
  const params = new URLSearchParams(window.location.search);
  // options the address leaves out are the defaults, so an earlier search comes back exactly as it ran
  els.target.value = params.get("target") || "auto";
  els.k.value = params.get("k") || "20";
  const label = params.get("label") || "";
  if (label && ![...els.label.options].some((o) => o.value === label)) els.label.append(new Option(label, label));
  els.label.value = label;
  if (params.get("q")) {
    els.query.value = params.get("q");
    searchText(params.get("q"), false);
  } else if (params.get("item")) {
    searchWithImageOf(params.get("item"), null, false);
  } else {
    els.query.value = "";
    els.results.replaceChildren();
    clearPreview();
    showMessage("");
  }
}

function showVersion(modelHash, indexVersion) {
  els.version.textContent = `model ${modelHash.slice(0, 12)} · index ${indexVersion}`;
}

async function loadStatus() {
  try {
    const ready = await fetch("/readyz").then((r) => r.json());
    if (!ready.ready) {
      els.version.textContent = `not ready: ${ready.detail || "loading"}`;
      setTimeout(loadStatus, 2000);
      return;
    }
    showVersion(ready.model_hash, ready.index_version);
    const labels = await callApi("/labels");
    const current = els.label.value;
    els.label.replaceChildren(new Option("any", ""), ...labels.labels.map((l) => new Option(l.name, l.name)));
    els.label.value = labels.labels.some((l) => l.name === current) ? current : "";
  } catch (err) {
    els.version.textContent = `status unavailable (${err.message})`;
    setTimeout(loadStatus, 5000);
  }
}

els.form.addEventListener("submit", (event) => { event.preventDefault(); searchText(els.query.value); });
els.file.addEventListener("change", () => {
  const file = els.file.files[0];
  if (file) { remember({}); searchImage(file, file.name); }  // an uploaded file cannot live in the address
  els.file.value = "";
});
els.drop.addEventListener("click", (event) => { if (event.target === els.drop) els.file.click(); });
els.drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); els.file.click(); }
});
for (const type of ["dragenter", "dragover"]) {
  els.drop.addEventListener(type, (event) => { event.preventDefault(); els.drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  els.drop.addEventListener(type, () => els.drop.classList.remove("over"));
}
els.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/")) || event.dataTransfer.files[0];
  if (file) { remember({}); searchImage(file, file.name); }
  else failure(new Error("Drop a picture file here."));
});
window.addEventListener("popstate", searchFromAddress);
loadStatus();
searchFromAddress();
setInterval(loadStatus, 30000);
