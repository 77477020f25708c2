// stylenet-serve's page: photos go to /api/jobs (one job per photo, polled for progress), webcam
// frames to /api/frame (one at a time, the next one when the previous is back). See handler.py.
"use strict";

const $ = (id) => document.getElementById(id);
const BUSY_RETRIES = 120; // 503 = the server's queue is full: wait and try again, this many times
let limits = { max_upload: Infinity, max_pixels: Infinity };

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// fetch that throws an Error carrying the server's one-line message (and the HTTP status)
async function request(path, options = {}) {
  const response = await fetch(path, options);
  if (response.ok) return response;
  let message = `HTTP ${response.status}`;
  try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
  throw Object.assign(new Error(message), { status: response.status });
}

function chosenStyles() {
  return [...document.querySelectorAll("#models input:checked")].map((box) => ({ id: box.value, label: box.dataset.label }));
}

// A blend of the ticked styles of one file of several styles: the server's id "ID:WEIGHT;ID:WEIGHT" (catalog.py).
const blendWeights = new Map(); // style id -> weight, kept while its box is unticked and ticked again
const blendsOn = new Set(); // files whose blend is on

function chosenBlends() {
  return [...document.querySelectorAll("#blends .blend")].filter((row) => blendsOn.has(row.dataset.file)).map((row) => {
    const sliders = [...row.querySelectorAll("input[type=range]")];
    return { id: sliders.map((slider) => `${slider.dataset.id}:${slider.value}`).join(";"), label: `${row.dataset.file} / blend`,
      empty: sliders.every((slider) => Number(slider.value) === 0) };
  });
}

function chosenModels() {
  return [...chosenStyles(), ...chosenBlends()];
}

// One row per file with two or more ticked styles: a switch and a weight per style.
function showBlends() {
  const box = $("blends");
  box.replaceChildren();
  const byFile = new Map();
  document.querySelectorAll("#models input:checked").forEach((input) => {
    if (!input.dataset.style) return; // a file's only style
    byFile.set(input.dataset.file, [...(byFile.get(input.dataset.file) || []), input]);
  });
  for (const [file, inputs] of byFile) {
    if (inputs.length < 2) continue;
    const on = element("input", { type: "checkbox", checked: blendsOn.has(file) });
    on.addEventListener("change", () => { if (on.checked) blendsOn.add(file); else blendsOn.delete(file); });
    const row = element("div", { className: "blend" }, element("label", { className: "check" }, on, ` Blend of ${file}`));
    row.dataset.file = file;
    for (const input of inputs) {
      const weight = blendWeights.get(input.value) ?? 0.5;
      const slider = element("input", { type: "range", min: 0, max: 1, step: 0.05, value: weight });
      slider.dataset.id = input.value;
      const shown = element("output", { value: weight.toFixed(2) });
      slider.addEventListener("input", () => {
        blendWeights.set(input.value, Number(slider.value));
        shown.value = Number(slider.value).toFixed(2);
      });
      row.append(element("label", { className: "weight" }, `${input.dataset.style} `, slider, " ", shown));
    }
    box.append(row);
  }
}

function controlsQuery() {
  return `strength=${$("strength").value}&preserve_color=${$("preserve-color").checked ? 1 : 0}`;
}

// A size in millions (MB, megapixels), three significant digits, as the server writes its limits: 0.01, 1.5, 2.
function millions(value) {
  return String(Number((value / 1e6).toPrecision(3)));
}

async function loadModels() {
  const info = await (await request("/api/models")).json();
  limits = info.limits;
  $("folder").textContent = `the folder ${info.folder}/`;
  $("limits").textContent = `Up to ${millions(limits.max_upload)} MB and ` +
    `${millions(limits.max_pixels)} megapixels per photo; large photos are processed in parts, with progress.`;
  const box = $("models");
  $("models-empty").textContent = info.models.length ? "" : "No style models in this folder.";
  const first = info.models.find((model) => model.readable); // ticked: the first style that can run
  info.models.forEach((model) => {
    const input = element("input", { type: "checkbox", value: model.id, checked: model === first });
    Object.assign(input.dataset, { label: model.label, file: model.file, style: model.style || "" });
    input.addEventListener("change", showBlends);
    box.append(element("label", {}, input, " " + model.label + (model.readable ? "" : " (cannot be read)")));
  });
}

// ------------------------------------------------------------------------------------ photos

function photoCard(file) {
  const card = element("div", { className: "card" });
  card.dataset.name = file.name;
  const status = element("p", { className: "status", textContent: "uploading…" });
  const bar = element("progress", { max: 1, value: 0 });
  card.append(element("h3", { textContent: file.name }), status, bar);
  $("results").prepend(card);
  return { card, status, bar };
}

function showError(view, message) {
  view.bar.remove();
  view.status.remove();
  view.card.append(element("p", { className: "error", textContent: message }));
}

async function submit(file, models, view) {
  const ids = encodeURIComponent(models.map((m) => m.id).join(","));
  const query = `models=${ids}&name=${encodeURIComponent(file.name)}&${controlsQuery()}`;
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await request(`/api/jobs?${query}`, { method: "POST", body: file });
      return (await response.json()).id;
    } catch (err) {
      if (err.status !== 503 || attempt >= BUSY_RETRIES) throw err;
      view.status.textContent = `waiting: ${err.message}`;
      await sleep(1000);
    }
  }
}

function showProgress(view, job) {
  const p = job.progress;
  const pass = p.total > 1 ? `, part ${p.done}/${p.total}` : "";
  view.status.textContent = job.state === "queued" ? "waiting for the server…"
    : `style ${p.model + 1}/${p.models}${pass}`;
  view.bar.value = (p.model + (p.total ? p.done / p.total : 0)) / Math.max(1, p.models);
}

function showResults(view, job, photoUrl) {
  view.bar.remove();
  view.status.textContent = job.size ? `${job.size[0]} × ${job.size[1]}` : "";
  if (job.note) view.card.append(element("p", { className: "photo-note", textContent: job.note }));
  for (const result of job.results) {
    if (result.error) {
      view.card.append(element("p", { className: "error", textContent: `${result.label}: ${result.error}` }));
      continue;
    }
    const link = element("a", { href: result.url, download: result.download, textContent: "download full size" });
    link.addEventListener("click", (event) => checkStillKept(event, link));
    const image = element("img", { className: "result", src: result.url, alt: `${job.name} in ${result.label}` });
    image.dataset.width = result.width;
    image.dataset.height = result.height;
    view.card.append(element("div", { className: "pair" },
      element("figure", {}, element("img", { className: "photo", src: photoUrl, alt: job.name, onerror: unshown }),
        element("figcaption", { textContent: "photo" })),
      element("figure", {}, image, element("figcaption", {}, `${result.label} · `, link))));
  }
}

// A photo the server reads and the browser does not (TIFF, in Chrome and Firefox): a line in its place, not the
// broken-image icon beside its result
function unshown(event) {
  event.target.replaceWith(element("p", { className: "photo-note", textContent: "this browser cannot show the photo's format" }));
}

// The server keeps the results of its last photos only: a link to one it dropped says so on the page,
// instead of a download that fails without a word.
async function checkStillKept(event, link) {
  // checked just now (the browser downloads it), or a modified click (a new tab or window: left to the browser)
  if (link.dataset.checked || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  link.nextElementSibling?.remove(); // an earlier attempt's message
  try {
    await request(link.href, { method: "HEAD" });
    link.dataset.checked = "1";
    link.click();
    delete link.dataset.checked;
  } catch (err) {
    if (err.status === 404) {
      link.replaceWith(element("span", { className: "error", textContent: "no longer kept by the server: stylize the photo again" }));
    } else { // the server or the network, for now: the link stays, to try again
      link.after(element("span", { className: "error", textContent: ` ${err.message}` }));
    }
  }
}

async function stylizePhoto(file) {
  const view = photoCard(file);
  const models = chosenModels();
  if (!models.length) return showError(view, "Choose at least one style.");
  const empty = models.find((model) => model.empty);
  if (empty) return showError(view, `${empty.label}: set at least one weight above 0.`);
  if (file.size > limits.max_upload) {
    return showError(view, `${file.name} is ${millions(file.size)} MB; this server takes uploads ` +
      `up to ${millions(limits.max_upload)} MB.`);
  }
  try {
    const id = await submit(file, models, view);
    let job;
    for (;;) {
      job = await (await request(`/api/jobs/${id}`)).json();
      if (job.state === "done") break;
      showProgress(view, job);
      await sleep(250);
    }
    if (job.error) return showError(view, job.error);
    showResults(view, job, URL.createObjectURL(file));
  } catch (err) {
    showError(view, err.message);
  }
}

function handleFiles(files) {
  // one after the other: the server's queue is for several tabs, one tab need not fill it
  [...files].reduce((previous, file) => previous.then(() => stylizePhoto(file)), Promise.resolve());
}

// ------------------------------------------------------------------------------------ webcam

const webcam = { stream: null, running: false, times: [], frames: 0 };

async function sendFrame(video, canvas, model) {
  const width = Number($("webcam-size").value);
  canvas.width = width;
  canvas.height = Math.max(8, Math.round(width * video.videoHeight / video.videoWidth));
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  const query = `model=${encodeURIComponent(model.id)}&${controlsQuery()}`;
  const response = await request(`/api/frame?${query}`, { method: "POST", body: blob });
  const image = $("webcam-result");
  const old = image.src;
  image.src = URL.createObjectURL(await response.blob());
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

function countFrame() {
  const now = performance.now();
  webcam.frames += 1;
  webcam.times = [...webcam.times.filter((t) => now - t < 3000), now];
  const span = (now - webcam.times[0]) / 1000;
  const fps = webcam.times.length > 1 && span > 0 ? (webcam.times.length - 1) / span : 0;
  $("fps").textContent = `${fps.toFixed(1)} frames/s`;
  $("fps").dataset.frames = webcam.frames;
}

async function webcamLoop() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  while (webcam.running) {
    const model = chosenBlends()[0] || chosenStyles()[0]; // a blend that is on, else the first ticked style
    if (!model || !video.videoWidth) { await sleep(200); continue; }
    try {
      await sendFrame(video, canvas, model);
      countFrame();
    } catch (err) {
      if (err.status === 503) { await sleep(200); continue; }
      stopWebcam(err.message);
    }
  }
}

async function startWebcam() {
  $("webcam-error").hidden = true;
  if (!window.isSecureContext || !navigator.mediaDevices) {
    // Browsers give a camera only to pages of this computer (127.0.0.1, localhost) or over https.
    const port = location.port || "80";
    return stopWebcam("No camera: browsers give the camera only to a page opened as http://127.0.0.1 or "
      + `over https; open the page on the computer that runs stylenet-serve, or reach it through a tunnel `
      + `(ssh -L ${port}:127.0.0.1:${port} ${location.hostname})`);
  }
  try {
    webcam.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    return stopWebcam(`No camera: ${err.message}`);
  }
  $("camera").srcObject = webcam.stream;
  webcam.running = true;
  $("webcam-start").disabled = true;
  $("webcam-stop").disabled = false;
  webcamLoop();
}

function stopWebcam(message) {
  webcam.running = false;
  if (webcam.stream) webcam.stream.getTracks().forEach((track) => track.stop());
  webcam.stream = null;
  $("webcam-start").disabled = false;
  $("webcam-stop").disabled = true;
  if (message) Object.assign($("webcam-error"), { hidden: false, textContent: message });
}

// ------------------------------------------------------------------------------------ wiring

function init() {
  $("strength").addEventListener("input", () => { $("strength-value").value = Number($("strength").value).toFixed(2); });
  $("files").addEventListener("change", (event) => { handleFiles(event.target.files); event.target.value = ""; });
  const drop = $("drop"); // photos may be dropped anywhere on the page (the browser would open them otherwise)
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    handleFiles(event.dataTransfer.files);
  });
  $("webcam-start").addEventListener("click", startWebcam);
  $("webcam-stop").addEventListener("click", () => stopWebcam());
  loadModels().catch((err) => { $("models-empty").textContent = `Cannot list the models: ${err.message}`; });
}

init();
