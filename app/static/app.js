// The search page: text box, image upload / drag and drop, results grid; clicking a result searches with it.
// Plain browser JavaScript, no build step. All data goes into the page through textContent / attributes, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("text-form"), query: $("query"), target: $("target"), label: $("label"), k: $("k"),
  drop: $("drop"), file: $("file"), preview: $("preview"), message: $("message"), results: $("results"), version: $("version"),
};
let previewUrl = null;

function showMessage(text, isError = false) {
  els.message.textContent = text;
  els.message.classList.toggle("error", isError);
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
    throw new Error(`the service cannot be reached (${err.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* non-JSON body: reported below */ }
  if (!response.ok) {
    throw new Error((body && body.detail) || `the service answered ${response.status}`);
  }
  return body;
}

async function searchText(text) {
  const query = text.trim();
  if (!query) { showMessage("Type a word or a sentence first.", true); return; }
  showMessage("Searching…");
  const opts = options("image");
  const body = { text: query, k: opts.k, target: opts.target };
  if (opts.labels) body.labels = opts.labels;
  try {
    const data = await callApi("/search/text", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    render(data, `“${query}”`);
  } catch (err) {
    showMessage(err.message, true);
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
    render(data, name ? `the image ${name}` : "the image");
  } catch (err) {
    showMessage(err.message, true);
  }
}

function setPreview(blob) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  els.preview.src = previewUrl;
  els.preview.hidden = false;
}

function render(data, what) {
  els.results.replaceChildren(...data.results.map(card));
  const n = data.results.length;
  const unknown = data.unknown_words || [];
  showMessage(`${n} result${n === 1 ? "" : "s"} for ${what} in ${data.took_ms.toFixed(1)} ms` +
    (unknown.length ? `; words the model does not know: ${unknown.join(", ")}` : ""));
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
    img.alt = hit.id;
    img.loading = "lazy";
    el.append(img);
    el.title = "Search with this image";
    el.addEventListener("click", () => searchWithImageOf(hit));
  } else {
    const p = document.createElement("p");
    p.className = "snippet";
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
    chip.textContent = name;
    labels.append(chip);
  }
  el.append(score, labels);
  return el;
}

async function searchWithImageOf(hit) {
  try {
    const response = await fetch(hit.image_url);
    if (!response.ok) throw new Error(`the image of ${hit.id} is not available (${response.status})`);
    await searchImage(await response.blob(), hit.id);
  } catch (err) {
    showMessage(err.message, true);
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
  if (file) searchImage(file, file.name);
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
  if (file) searchImage(file, file.name);
  else showMessage("Drop an image file.", true);
});
loadStatus();
setInterval(loadStatus, 30000);
