// Flower classifier web demo: camera (or a chosen photo) -> centre square -> TF.js graph model -> an
// answer: the species with its calibrated probability, "Not sure" (top 3), or "not one of mine".
//
// Files it expects next to it (the exporter puts them there): metadata.json (class names, input
// size, and `trust`: temperature and thresholds), tfjs_model/model.json (+ weight shards), vendor/
// (TF.js and its wasm binaries), embedding_stats.bin (the training photos' embedding statistics).
// The model takes RGB 0-255 and normalises itself: the page never normalises.
// The model's probabilities output is already softmax(logits / T); the scores below mirror
// flowers_jax/abstain.py exactly (tests compare the two).
//
// Add a species: the user names a species and takes ~10 shots (or chooses photos); the page keeps the
// mean of their embeddings and adds it as a class beside the trained ones (flowers_jax/personalise.py:
// the same arithmetic; tests compare the two). Kept in IndexedDB per model; nothing leaves the device.
//
// URL options: ?backend=wasm (or a list to try in order, e.g. wasm,cpu), ?camera=off (do not open the camera),
// ?threads=N (wasm threads; default TF.js's own choice, see below), ?sw=off (no service worker).
//
// Threads: TF.js 4.22's wasm backend runs min(8, floor(navigator.hardwareConcurrency / 2)) threads, and
// only on a cross-origin isolated page (the server sends COOP same-origin + COEP require-corp:
// python -m flowers_jax.serve does); otherwise one. The page shows the count, the cores and the isolation.
// Offline: sw.js (filled in by the exporter) caches the page, TF.js and the model on the first visit;
// browsers allow it only on a trusted origin (https with a trusted certificate, or localhost).
// window.demo exposes the state for tests and benchmarks (see the bottom of this file).
'use strict';

const params = new URLSearchParams(location.search);
const BACKENDS = params.get('backend') ? params.get('backend').split(',') : ['webgl', 'wasm', 'cpu'];
const $ = (id) => document.getElementById(id);

const state = {
  status: 'loading',      // loading | ready | error
  backend: null,
  backendDetail: null,    // e.g. "wasm, 1 thread"
  threads: null,          // wasm threads in use (null on another backend)
  cores: navigator.hardwareConcurrency || null,
  isolated: window.crossOriginIsolated === true,
  offline: 'unknown',     // unknown | ready (cached: works offline) | unavailable (see offlineNote)
  offlineNote: '',
  offlineDone: null,      // Promise: settles once `offline` is decided
  metadata: null,
  model: null,
  size: 0,
  source: null,           // 'camera' | 'photo'
  running: false,         // camera loop on
  frame: 0,               // predictions made so far
  firstAnswerMs: null,    // performance.now() (ms since the page was opened) when the first answer showed
  last: null,             // {top5: [{index, name, prob}], decision, scores, ms, source, frame}
  trust: null,            // metadata.trust: {calibrated, temperature, not_sure, not_a_known_flower}
  stats: null,            // {unit_means, means, precision, background_mean, background_precision}: Float32Arrays
                          // (row-major, shapes in metadata.trust.embedding_stats), plus the cached m^T P m terms
  lastPixels: null,       // Uint8ClampedArray RGBA of the size x size input of `last`
  lastEmbedding: null,    // Float32Array [D] of `last`: the pooled features (for adding species on the device)
  lastLogits: null,       // Float32Array [C] of `last`: the model's own logits (before added species)
  cameraError: '',        // why the camera did not open, for the add-a-species panel
  // Added species (this model's): [{id, model, name, mean: Float32Array [D], shots, created, kept}];
  // kept: stored in IndexedDB (false: this visit only). addedMeans [A * D] / addedTerms [A] are
  // the rows and m^T P m terms the arithmetic uses, rebuilt whenever the list changes.
  added: [],
  addedMeans: new Float32Array(0),
  addedUnitMeans: new Float32Array(0),
  addedTerms: new Float64Array(0),
  addSpecies: null,       // metadata.trust.add_species {scale, margin}, or null: adding is off
  modelKey: null,         // which model added species belong to (metadata: name, checkpoint, classes, size)
  db: null,               // the IndexedDB database, or null: added species last this visit only
  storageNote: '',        // why they are not kept, when db is null
  adding: null,           // while the panel is open: {shots: [Float32Array [D]], pixels: [Uint8ClampedArray]}
  lastShots: [],          // RGBA pixels of the last added species' shots (tests compare Flax on them)
  errors: [],
};

// The model's input: the centred square of the frame, resized to size x size.
const canvas = document.createElement('canvas');
const ctx = canvas.getContext('2d', { willReadFrequently: true });

function setStatus(text) {
  $('status').textContent = text;
}

function showMessage(text, kind = 'info') {
  const box = $('message');
  box.textContent = text;
  box.className = kind === 'error' ? 'message error' : 'message';
  box.hidden = !text;
}

async function fetchJson(url) {
  const response = await fetch(url, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// Tries each backend in order; a backend counts only if the model loads and runs on it
// (e.g. a phone's WebGL can initialise and still fail on the first convolution).
const isNotFound = (e) => /\b404\b/.test(String(e));

async function loadModelOnSomeBackend() {
  if (tf.wasm) {
    // Both before setBackend('wasm'). A prefix (not the deprecated setWasmPath) lets the backend pick
    // the threaded SIMD binary when the page is isolated; the worker script is inlined in the bundle.
    tf.wasm.setWasmPaths('vendor/');
    if (params.get('threads')) tf.wasm.setThreadsCount(Number(params.get('threads')));
  }
  const failures = [];
  for (const name of BACKENDS) {
    let model = null;
    try {
      if (!(await tf.setBackend(name))) throw new Error('not available here');
      await tf.ready();
      model = await tf.loadGraphModel('tfjs_model/model.json');
      tf.tidy(() => model.predict(tf.zeros([1, state.size, state.size, 3])));  // warm-up compiles kernels
      return { model, backend: name, failures };
    } catch (e) {
      if (isNotFound(e)) throw e;  // the model is missing: no backend will help
      if (model) model.dispose();
      failures.push(`${name}: ${e.message || e}`);
      console.warn(`backend ${name} failed:`, e);
    }
  }
  throw new Error(`no TF.js backend could run the model (${failures.join('; ')})`);
}

// "wasm, 2 threads". Threads need a cross-origin isolated page (COOP/COEP headers), which a plain
// static server does not give; the page works either way.
function backendDetail(name) {
  if (name !== 'wasm' || !tf.wasm || typeof tf.wasm.getThreadsCount !== 'function') return name;
  const n = tf.wasm.getThreadsCount();
  state.threads = n;
  return `wasm, ${n} thread${n === 1 ? '' : 's'}`;
}

function showPlatform() {
  $('cores').textContent = `${state.cores ?? '?'} cores`;
  $('isolation').textContent = state.isolated ? 'cross-origin isolated' : 'not cross-origin isolated';
}

// ---- offline: the service worker ---------------------------------------------------------------

function offlineUnavailable(why) {
  state.offline = 'unavailable';
  state.offlineNote = `This page can't be installed or used offline here: ${why} It works online as it is.`;
  $('offline').textContent = 'online only';
  $('install-note').textContent = state.offlineNote;
  $('install-note').hidden = false;
}

async function registerServiceWorker() {
  if (params.get('sw') === 'off') return offlineUnavailable('the service worker is turned off (?sw=off).');
  if (!window.isSecureContext) {
    return offlineUnavailable('this address is not a secure context (open it over https:// or from localhost).');
  }
  if (!('serviceWorker' in navigator)) return offlineUnavailable('this browser has no service workers.');
  let registration;
  try {
    registration = await navigator.serviceWorker.register('sw.js');
  } catch (e) {
    const text = String(e.message || e).replace(/\.$/, '');  // it is quoted mid-sentence
    if (isNotFound(text)) {
      return offlineUnavailable(`this export has no service worker (sw.js: ${text}); export it again.`);
    }
    // Chrome refuses a service worker from a server whose certificate it does not trust
    // ("An SSL certificate error occurred when fetching the script"), even after the user
    // clicked through the warning.
    return offlineUnavailable(
      `the browser refused the service worker (${text}). On a https:// address that means this ` +
        `device does not trust the server's certificate: install the local CA (${location.origin}/flowers-jax-ca.crt; ` +
        'README, "The demo on a phone") or publish the folder on a host with a real certificate.',
    );
  }
  try {
    await activated(registration);
  } catch (e) {
    return offlineUnavailable(`the files could not be stored on this device (${e.message || e}).`);
  }
  state.offline = 'ready';
  $('offline').textContent = 'works offline';
}

// Resolves once a worker is active (its install cached every file); rejects when the install failed
// (a file missing, storage full), where navigator.serviceWorker.ready would wait forever.
function activated(registration) {
  if (registration.active) return Promise.resolve();
  const worker = registration.installing || registration.waiting;
  return new Promise((resolve, reject) => {
    worker.addEventListener('statechange', () => {
      if (worker.state === 'activated') resolve();
      if (worker.state === 'redundant') reject(new Error('the service worker failed to install'));
    });
  });
}

// ---- trust: "not sure" and "not one of my flowers" (formulas: flowers_jax/abstain.py) -------

function confidenceScore(name, logits, probs) {
  const sorted = Array.from(probs).sort((a, b) => b - a);
  if (name === 'msp') return sorted[0];
  if (name === 'margin') return sorted[0] - sorted[1];
  if (name === 'max_logit') return Math.max(...logits);
  throw new Error(`unknown confidence score ${name}`);
}

// x^T P x - 2 (P x) . m_k + m_k^T P m_k for each row m_k of means [K * D] (as abstain.py expands it;
// `terms` holds the m_k^T P m_k, computed once at load). JS numbers are float64, as in Python.
function quadTerms(means, precision, d) {
  const k = means.length / d;
  const out = new Float64Array(k);
  for (let r = 0; r < k; r++) {
    const pm = matVec(precision, means.subarray(r * d, (r + 1) * d), d);
    let t = 0;
    for (let i = 0; i < d; i++) t += pm[i] * means[r * d + i];
    out[r] = t;
  }
  return out;
}

function matVec(p, x, d) {  // P x for symmetric P [D * D]
  const out = new Float64Array(d);
  for (let i = 0; i < d; i++) {
    let t = 0;
    const row = i * d;
    for (let j = 0; j < d; j++) t += p[row + j] * x[j];
    out[i] = t;
  }
  return out;
}

// `px`: P x when the caller has it already (one D x D product a frame serves every mean).
function squaredMahalanobis(x, means, precision, terms, px = matVec(precision, x, x.length)) {
  const d = x.length;
  let xpx = 0;
  for (let i = 0; i < d; i++) xpx += px[i] * x[i];
  const out = new Float64Array(terms.length);
  for (let r = 0; r < terms.length; r++) {
    let dot = 0;
    for (let i = 0; i < d; i++) dot += px[i] * means[r * d + i];
    out[r] = xpx - 2 * dot + terms[r];
  }
  return out;
}

// embedding_stats.bin: float32 arrays one after another, named and shaped by metadata.trust.embedding_stats.
async function loadStats(layout) {
  const response = await fetch(layout.file);
  if (!response.ok) throw new Error(`Model incomplete: ${layout.file}: HTTP ${response.status}`);
  const buffer = await response.arrayBuffer();
  const stats = {};
  let offset = 0;
  for (const { name, shape } of layout.arrays) {
    const n = shape.reduce((a, b) => a * b, 1);
    stats[name] = new Float32Array(buffer, offset * 4, n);
    offset += n;
  }
  if (offset * 4 !== buffer.byteLength) {
    throw new Error(`Model incomplete: ${layout.file} holds ${buffer.byteLength} bytes, metadata.json says ${offset * 4}`);
  }
  const d = stats.background_mean.length;
  // Classes without training photos (the Kaggle list names species Oxford lacks) have no mean: the
  // distances and discriminants run over the others only, as in abstain.py and personalise.py.
  const present = [];
  stats.counts.forEach((n, c) => { if (n > 0) present.push(c); });
  stats.presentMeans = new Float32Array(present.length * d);
  present.forEach((c, r) => stats.presentMeans.set(stats.means.subarray(c * d, (c + 1) * d), r * d));
  stats.meansTerm = quadTerms(stats.presentMeans, stats.precision, d);
  stats.backgroundTerm = quadTerms(stats.background_mean, stats.background_precision, d);
  return stats;
}

// The smallest squared Mahalanobis distance to a class mean, added species included (their means join
// the trained ones: personalise.with_added), so that a photo of an added species counts as known.
function nearestClass(embedding, px) {
  const st = state.stats;
  const trained = squaredMahalanobis(embedding, st.presentMeans, st.precision, st.meansTerm, px);
  const added = squaredMahalanobis(embedding, state.addedMeans, st.precision, state.addedTerms, px);
  return Math.min(...trained, ...added);
}

function maxCosine(embedding, unitMeans, best) {
  const d = embedding.length;
  let norm = 0;
  for (const v of embedding) norm += v * v;
  norm = Math.max(Math.sqrt(norm), 1e-12);
  for (let c = 0; c < unitMeans.length / d; c++) {
    let dot = 0;
    for (let i = 0; i < d; i++) dot += embedding[i] * unitMeans[c * d + i];
    best = Math.max(best, dot / norm);
  }
  return best;
}

// `logits`/`probs`: with the added species' columns; `px`: P e (null: computed here when needed).
function opensetScore(name, logits, probs, embedding, temperature, px = null) {
  if (name === 'msp' || name === 'max_logit') return confidenceScore(name, logits, probs);
  if (name === 'energy') {  // T * logsumexp(z / T)
    const m = Math.max(...logits);
    let sum = 0;
    for (const z of logits) sum += Math.exp((z - m) / temperature);
    return m + temperature * Math.log(sum);
  }
  const st = state.stats;
  if (!st) throw new Error(`the ${name} open-set score needs embedding_stats.bin`);
  if (name === 'cosine') {  // max over classes (added ones too) of cos(embedding, unit class mean)
    return maxCosine(embedding, state.addedUnitMeans, maxCosine(embedding, st.unit_means, -Infinity));
  }
  const nearest = nearestClass(embedding, px ?? matVec(st.precision, embedding, embedding.length));
  if (name === 'mahalanobis') return -nearest;
  if (name === 'relative_mahalanobis') {
    return squaredMahalanobis(embedding, st.background_mean, st.background_precision, st.backgroundTerm)[0] - nearest;
  }
  throw new Error(`unknown open-set score ${name}`);
}

// "answer" | "not_sure" | "unknown" (as flowers_jax.trust.Calibration.decide), or "uncalibrated".
function decide(logits, probs, embedding, px = null) {
  const t = state.trust;
  if (!t || !t.calibrated) return { decision: 'uncalibrated', scores: {} };
  const known = opensetScore(t.not_a_known_flower.score, logits, probs, embedding, t.temperature, px);
  const sure = confidenceScore(t.not_sure.score, logits, probs);
  let decision = 'answer';
  if (known < t.not_a_known_flower.threshold) decision = 'unknown';
  else if (sure < t.not_sure.threshold) decision = 'not_sure';
  return { decision, scores: { known, sure } };
}

function renderVerdict(decision, top5) {
  const box = $('verdict');
  const n = state.metadata.num_classes;
  const text = {
    // A calibrated 99.96% is not certainty: never round it up to "100%".
    answer: `${label(top5[0])} · ${top5[0].prob >= 0.999 ? '> 99.9' : (top5[0].prob * 100).toFixed(1)}%`,
    not_sure: 'Not sure. It might be one of these:',
    unknown: `This doesn't look like one of the ${n} flowers I know.`,
    uncalibrated: label(top5[0]),
  }[decision];
  box.textContent = text;
  box.className = `verdict ${decision.replace('_', '-')}`;
  box.hidden = false;
}

function renderTop5(top5, ms, decision = 'uncalibrated') {
  renderVerdict(decision, top5);
  const list = $('top5');
  // Not sure: the three likeliest; not one of mine: no species at all.
  const shown = decision === 'unknown' ? [] : decision === 'not_sure' ? top5.slice(0, 3) : top5;
  list.hidden = shown.length === 0;
  list.replaceChildren(
    ...shown.map((species) => {
      const { prob } = species;
      const li = document.createElement('li');
      li.classList.toggle('yours', species.yours);
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = label(species);
      const percent = document.createElement('span');
      percent.className = 'percent';
      percent.textContent = `${(prob * 100).toFixed(1)}%`;
      const bar = document.createElement('div');
      bar.className = 'bar';
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0, Math.min(100, prob * 100)).toFixed(1)}%`;
      bar.append(fill);
      li.append(name, percent, bar);
      return li;
    }),
  );
  $('latency').textContent = `${ms.toFixed(1)} ms`;
}

// The one model path of every prediction and every shot of an added species: the centred square of
// `source` (video, image or bitmap) resized to size x size on the canvas, through the graph.
// Returns {z, p, e} (logits, probabilities, embedding), the RGBA pixels fed, and the model's ms.
async function runModel(source, width, height) {
  const side = Math.min(width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, state.size, state.size);
  // The pixels are read before the model runs: a camera frame and a shot may share the canvas.
  const image = ctx.getImageData(0, 0, state.size, state.size);
  const t0 = performance.now();
  const out = tf.tidy(() => {
    const x = tf.browser.fromPixels(image).toFloat().expandDims(0);  // RGB 0-255, as the model wants
    return state.model.predict(x);
  });
  const [z, p, e] = await Promise.all([out.logits.data(), out.probabilities.data(), out.embedding.data()]);
  tf.dispose(Object.values(out));
  return { z, p, e, pixels: image.data, ms: performance.now() - t0 };
}

// g_j(e) = m_j^T P e - m_j^T P m_j / 2 for each row m_j of means [K * D], from px = P e and the
// cached m_j^T P m_j (personalise.discriminants).
function discriminants(px, means, terms) {
  const d = px.length;
  const out = new Float64Array(terms.length);
  for (let r = 0; r < terms.length; r++) {
    let dot = 0;
    for (let i = 0; i < d; i++) dot += px[i] * means[r * d + i];
    out[r] = dot - 0.5 * terms[r];
  }
  return out;
}

function softmax(logits, temperature) {
  const m = Math.max(...logits);
  const out = Float64Array.from(logits, (z) => Math.exp((z - m) / temperature));
  const sum = out.reduce((a, b) => a + b, 0);
  return out.map((v) => v / sum);
}

// The model's logits z [C] extended by one column per added species (personalise.added_logits):
// z_a = max_k z_k + scale * (g_a - max_k g_k - margin), and softmax([z, z_a] / T), which replace the
// model's probabilities for the answer. Without added species: the model's own outputs.
function withAddedSpecies(z, p, px) {
  if (!state.added.length) return { logits: z, probs: p };
  const st = state.stats;
  const { scale, margin } = state.addSpecies;
  const trained = Math.max(...discriminants(px, st.presentMeans, st.meansTerm));
  const added = discriminants(px, state.addedMeans, state.addedTerms);
  const zmax = Math.max(...z);
  const logits = Float64Array.from([...z, ...Array.from(added, (g) => zmax + scale * (g - trained - margin))]);
  return { logits, probs: softmax(logits, state.trust.temperature) };
}

const MAHALANOBIS = ['mahalanobis', 'relative_mahalanobis'];

// Crop the centred square of `source` (video, image or bitmap), resize, predict, show.
async function classify(source, width, height, kind) {
  const { z, p, e, pixels, ms } = await runModel(source, width, height);
  if (kind === 'camera' && !state.running) return state.last;  // a chosen photo replaced the camera meanwhile
  state.lastEmbedding = e;
  state.lastLogits = z;
  // P e once per frame: the added species' discriminants and the Mahalanobis open-set score share it.
  const needsPx = state.stats && (state.added.length || MAHALANOBIS.includes(state.trust.not_a_known_flower.score));
  const px = needsPx ? matVec(state.stats.precision, e, e.length) : null;
  const { logits, probs } = withAddedSpecies(z, p, px);
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]).slice(0, 5);
  const top5 = order.map((i) => ({ index: i, prob: probs[i], ...speciesName(i) }));
  const { decision, scores } = decide(logits, probs, e, px);
  state.frame += 1;
  // ms from the start of navigation ("open") to the first answer on the page (benchmarks).
  if (state.firstAnswerMs === null) state.firstAnswerMs = performance.now();
  state.last = {
    top5, decision, scores, ms, source: kind, frame: state.frame,
    logits: Array.from(logits), probabilities: Array.from(probs),  // with the added species' columns
  };
  state.lastPixels = pixels;
  renderTop5(top5, ms, decision);
  return state.last;
}

// Index i of the extended outputs -> {name, yours}: trained classes first, then the added species.
function speciesName(i) {
  const names = state.metadata.class_names;
  if (i < state.metadata.num_classes) return { name: names[i] ?? `class ${i}`, yours: false };
  return { name: state.added[i - state.metadata.num_classes].name, yours: true };
}

const label = ({ name, yours }) => (yours ? `${name} (yours)` : name);

// ---- camera -------------------------------------------------------------------------------

function cameraErrorText(e) {
  switch (e && e.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera permission was refused. Allow camera access for this page in the browser settings, or choose a photo below.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found on this device. Choose a photo below instead.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera is in use by another app or could not start. Close other camera apps and tap "Use camera", or choose a photo.';
    default:
      return `The camera could not be opened (${(e && (e.name || e.message)) || e}). Choose a photo below instead.`;
  }
}

// A few words on why the camera is off, for the add-a-species panel's message.
function cameraReason(e) {
  const name = e && e.name;
  if (name === 'NotAllowedError' || name === 'SecurityError') return 'camera permission was refused';
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return 'no camera was found';
  if (name === 'NotReadableError' || name === 'AbortError') return 'the camera is in use by another app';
  return `the camera could not be opened (${(e && (e.name || e.message)) || e})`;
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    state.cameraError = 'this page has no camera access (it needs https:// or localhost)';
    showMessage(
      'This browser gives no camera access to this page: open it over https:// or from http://localhost, or choose a photo below.',
      'error',
    );
    return false;
  }
  let stream;
  try {
    // The rear camera as a preference, not a requirement ({exact: ...} fails on laptops).
    stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: { ideal: 'environment' }, width: { ideal: 1280 }, height: { ideal: 720 } },
    });
  } catch (e) {
    state.cameraError = cameraReason(e);
    showMessage(cameraErrorText(e), 'error');
    $('camera-button').hidden = false;
    return false;
  }
  const video = $('video');
  video.srcObject = stream;
  await video.play().catch(() => {});
  video.hidden = false;
  $('photo').hidden = true;
  $('placeholder').hidden = true;
  $('camera-button').hidden = true;
  showMessage('');
  state.source = 'camera';
  state.running = true;
  requestAnimationFrame(cameraLoop);
  return true;
}

async function cameraLoop() {
  if (!state.running) return;
  const video = $('video');
  try {
    if (video.readyState >= 2 && video.videoWidth > 0) {
      await classify(video, video.videoWidth, video.videoHeight, 'camera');
    }
  } catch (e) {
    state.errors.push(String(e));
    showMessage(`Prediction failed: ${e.message || e}`, 'error');
  }
  requestAnimationFrame(cameraLoop);
}

function stopCamera() {
  state.running = false;
  const video = $('video');
  if (video.srcObject) video.srcObject.getTracks().forEach((t) => t.stop());
  video.srcObject = null;
  video.hidden = true;
  $('camera-button').hidden = false;
}

// ---- photo upload ---------------------------------------------------------------------------

async function classifyFile(file) {
  if (!file) return null;
  stopCamera();
  const photo = $('photo');
  const url = URL.createObjectURL(file);
  photo.src = url;
  try {
    await photo.decode();
  } catch (e) {
    showMessage(`This file could not be read as an image (${file.name}).`, 'error');
    return null;
  }
  photo.hidden = false;
  $('placeholder').hidden = true;
  state.source = 'photo';
  showMessage('');
  return classify(photo, photo.naturalWidth, photo.naturalHeight, 'photo');
}

// ---- add a species: kept in IndexedDB, on this device only (arithmetic: withAddedSpecies) -----

const DB_NAME = 'flowers-jax';
const DB_STORE = 'species';
const SHOTS_ADVISED = 10;
const addNotes = [];
let visitIds = 0;  // ids of species kept for this visit only (IndexedDB gives the others theirs)

function addMessage(text, kind = 'info') {
  const box = $('add-message');
  box.textContent = text;
  box.className = kind === 'error' ? 'message error' : 'message';
  box.hidden = !text;
}

function addNote(text) {
  addNotes.push(text);
  $('add-note').textContent = addNotes.join(' ');
  $('add-note').hidden = false;
}

// An added species' mean embedding means something only to the network and input size that made it.
function modelKey(meta) {
  const c = meta.checkpoint || {};
  const source = c.workdir || c.pretrained || c.source || 'unknown source';
  return `${meta.model_name} | ${source} | step ${c.step ?? '-'} | ${meta.num_classes} classes | ${meta.input.size} px`;
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function openDb() {
  if (!window.indexedDB) throw new Error('this browser has none');
  const req = indexedDB.open(DB_NAME, 1);  // some private modes throw here, others fail the request
  req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE, { keyPath: 'id', autoIncrement: true });
  return request(req);
}

// fn(store) in one transaction; resolves with its request's result once the transaction commits
// (a quota error can abort the transaction after the request itself succeeded).
function inStore(mode, fn) {
  return new Promise((resolve, reject) => {
    try {
      const tx = state.db.transaction(DB_STORE, mode);
      const req = fn(tx.objectStore(DB_STORE));
      tx.oncomplete = () => resolve(req.result);
      tx.onabort = () => reject(tx.error || new Error('the browser aborted the write'));
    } catch (e) {
      reject(e);
    }
  });
}

function storageProblem(e) {
  if (e && e.name === 'QuotaExceededError') {
    return "this device's storage for the page is full (free some space, or delete species you no longer need, and add it again to keep it)";
  }
  return `the browser's storage refused it (${(e && (e.message || e.name)) || e})`;
}

const stored = ({ kept, ...record }) => record;  // `kept` describes this visit, not the species

// '' once `record` is in IndexedDB (a new one gets its id), else why it lasts this visit only.
async function saveRecord(record) {
  record.kept = false;
  if (!state.db) return state.storageNote;
  try {
    record.id = await inStore('readwrite', (s) => s.put(stored(record)));
    record.kept = true;
    return '';
  } catch (e) {
    return storageProblem(e);
  }
}

// Loads this model's added species, or disables adding and says why.
async function initSpecies() {
  const t = state.trust;
  state.addSpecies = t && t.calibrated && state.stats && t.add_species ? t.add_species : null;
  if (!state.addSpecies) {
    $('add-species').disabled = true;
    addNote(
      'Adding a species needs an export calibrated for it (its metadata.json has no trust.add_species): ' +
        'run `--mode calibrate` on the workdir, then export again.',
    );
    return;
  }
  state.modelKey = modelKey(state.metadata);
  $('add-species').disabled = false;
  let records;
  try {
    state.db = await openDb();
    records = await inStore('readonly', (s) => s.getAll());
  } catch (e) {
    state.db = null;
    const why = String(e.message || e.name || e).replace(/\.$/, '');  // quoted mid-sentence
    state.storageNote = `this browser gives the page no storage (IndexedDB: ${why}; private windows do this)`;
    addNote(`Species you add work until this page is closed but are not kept: ${state.storageNote}.`);
    return;
  }
  const d = state.stats.background_mean.length;
  const mine = records.filter((r) => r.model === state.modelKey && r.mean instanceof Float32Array && r.mean.length === d);
  const others = records.filter((r) => r.model !== state.modelKey);
  state.added = mine.map((r) => ({ ...r, kept: true }));
  refreshAdded();
  if (others.length) {
    const names = others.map((r) => `"${r.name}"`).join(', ');
    addNote(
      `${others.length} species added with another model (${names}) ${others.length === 1 ? 'is' : 'are'} kept ` +
        `on this device but not used here: their photos' features mean nothing to this model. Add them again for it.`,
    );
  }
}

// Rebuilds the rows the arithmetic reads (means, unit means, m^T P m) and the list on the page.
function refreshAdded() {
  const d = state.stats.background_mean.length;
  const means = new Float32Array(state.added.length * d);
  const unit = new Float32Array(state.added.length * d);
  state.added.forEach((r, a) => {
    means.set(r.mean, a * d);
    let norm = 0;
    for (const v of r.mean) norm += v * v;
    norm = Math.max(Math.sqrt(norm), 1e-12);
    for (let i = 0; i < d; i++) unit[a * d + i] = r.mean[i] / norm;
  });
  state.addedMeans = means;
  state.addedUnitMeans = unit;
  state.addedTerms = quadTerms(means, state.stats.precision, d);
  renderAdded();
}

function element(tag, className, text = '') {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = text;
  return el;
}

function button(text, className, onClick) {
  const b = element('button', className, text);
  b.type = 'button';
  if (onClick) b.addEventListener('click', onClick);
  return b;
}

function renderAdded() {
  const list = $('added-list');
  list.hidden = state.added.length === 0;
  list.replaceChildren(...state.added.map(speciesItem));
}

function speciesItem(record) {
  const li = document.createElement('li');
  li.dataset.name = record.name;
  const shots = `${record.shots} photo${record.shots === 1 ? '' : 's'}${record.kept ? '' : ' · this visit only'}`;
  li.append(
    element('span', 'added-name', record.name),
    element('span', 'added-info', shots),
    button('Rename', 'rename', () => startRename(li, record)),
    button('Delete', 'delete', () => deleteSpecies(record)),
  );
  return li;
}

function startRename(li, record) {
  const form = element('form', 'rename-form');
  const input = element('input', 'rename-input');
  input.value = record.name;
  input.maxLength = 60;
  input.setAttribute('aria-label', `New name for ${record.name}`);
  const save = button('Save', 'rename-save');
  save.type = 'submit';
  form.append(input, save, button('Cancel', 'rename-cancel', renderAdded));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    renameSpecies(record, input.value).catch(reportAddError);
  });
  li.replaceChildren(form);
  input.focus();
}

const cleanName = (s) => s.trim().replace(/\s+/g, ' ');
const sameName = (a, b) => a.toLowerCase() === b.toLowerCase();

// Why `name` cannot name an added species ('' if it can); `except`: the species being renamed.
function nameProblem(name, except = null) {
  if (!name) return 'Give your species a name first.';
  const trained = state.metadata.class_names.find((n) => sameName(n, name));
  if (trained) return `"${trained}" is one of the species this model was trained on: choose another name.`;
  const added = state.added.find((r) => r !== except && sameName(r.name, name));
  if (added) return `You already added a species called "${added.name}": choose another name, or delete that one first.`;
  return '';
}

async function renameSpecies(record, typed) {
  const name = cleanName(typed);
  const problem = nameProblem(name, record);
  if (problem) return addMessage(problem, 'error');  // the form stays open with what was typed
  const before = record.name;
  record.name = name;
  if (record.kept) {
    try {
      await inStore('readwrite', (s) => s.put(stored(record)));
    } catch (e) {
      record.name = before;
      return addMessage(`Could not rename "${before}": ${storageProblem(e)}. Nothing was changed.`, 'error');
    }
  }
  renderAdded();
  addMessage(`Renamed "${before}" to "${name}".`);
  await reclassifyPhoto();
}

async function deleteSpecies(record) {
  if (!window.confirm(`Delete "${record.name}"? Its ${record.shots} photos' features are gone for good.`)) return;
  if (record.kept) {
    try {
      await inStore('readwrite', (s) => s.delete(record.id));
    } catch (e) {
      return addMessage(`Could not delete "${record.name}": ${storageProblem(e)}. Nothing was changed.`, 'error');
    }
  }
  state.added = state.added.filter((r) => r !== record);
  refreshAdded();
  addMessage(`Deleted "${record.name}".`);
  await reclassifyPhoto();
}

// The answer on a chosen photo follows the list (the camera's next frame does so by itself).
async function reclassifyPhoto() {
  const photo = $('photo');
  if (!state.running && state.source === 'photo' && !photo.hidden) {
    await classify(photo, photo.naturalWidth, photo.naturalHeight, 'photo');
  }
}

async function openAddPanel() {
  const session = { shots: [], pixels: [] };
  state.adding = session;
  $('add-name').value = '';
  $('add-panel').hidden = false;
  $('add-species').hidden = true;
  addMessage('');
  updateShots();
  $('add-name').focus();
  const camera = state.running || (await startCamera());
  // The camera can answer late (a permission prompt left open): by then this species may be added
  // from photos or cancelled, and a message about its shots would overwrite what happened since.
  if (state.adding !== session) return;
  $('add-shot').hidden = !camera;
  if (!camera) {
    addMessage(
      `No shots from the camera: ${state.cameraError}. Choose photos of your species instead ` +
        `(about ${SHOTS_ADVISED}, from different sides).`,
      'error',
    );
  }
}

function closeAddPanel() {
  state.adding = null;
  $('add-panel').hidden = true;
  $('add-species').hidden = false;
  $('add-files').value = '';
}

function updateShots() {
  const n = state.adding.shots.length;
  $('add-shot').textContent = `Take a shot (${n})`;
  $('add-count').textContent = n
    ? `${n} photo${n === 1 ? '' : 's'}${n < SHOTS_ADVISED ? ` · about ${SHOTS_ADVISED}, from different sides, is best` : ''}`
    : `No photos yet: take about ${SHOTS_ADVISED}, from different sides and distances.`;
  // Pressable at 0 too (it then says what is missing): a dead button explains nothing.
  $('add-done').classList.toggle('inactive', n === 0);
  $('add-done').setAttribute('aria-disabled', String(n === 0));
}

function addShot({ e, pixels }) {
  if (!state.adding) return;  // cancelled while the model ran
  state.adding.shots.push(e);
  state.adding.pixels.push(pixels);
  updateShots();
}

// A shot is the camera's current frame through runModel: the path of every prediction.
async function takeShot() {
  const video = $('video');
  if (!state.running || video.readyState < 2 || !video.videoWidth) {
    return addMessage('The camera shows no picture yet: wait a moment and take the shot again, or choose photos.', 'error');
  }
  addShot(await runModel(video, video.videoWidth, video.videoHeight));
}

async function decodeImage(file) {
  const img = new Image();
  img.src = URL.createObjectURL(file);
  try {
    await img.decode();
    return img;
  } catch {
    return null;
  } finally {
    setTimeout(() => URL.revokeObjectURL(img.src), 0);
  }
}

async function addPhotos(files) {
  const unreadable = [];
  for (const file of files) {
    const img = await decodeImage(file);
    if (!img) unreadable.push(file.name);
    else addShot(await runModel(img, img.naturalWidth, img.naturalHeight));
  }
  $('add-files').value = '';  // choosing the same files again is a new choice
  if (unreadable.length && state.adding) {
    const which = unreadable.length === files.length ? 'None of the chosen files' : `${unreadable.length} of the chosen files`;
    addMessage(`${which} could be read as an image (${unreadable.join(', ')}); photos taken so far are kept.`, 'error');
  }
}

function meanOf(shots) {
  const sum = new Float64Array(shots[0].length);
  for (const e of shots) for (let i = 0; i < sum.length; i++) sum[i] += e[i];
  return Float32Array.from(sum, (v) => v / shots.length);
}

async function finishAdd() {
  const s = state.adding;
  if (!s) return;
  const name = cleanName($('add-name').value);
  const problem = nameProblem(name) ||
    (s.shots.length ? '' : `Take at least one photo of it first (about ${SHOTS_ADVISED}, from different sides, is best), or choose photos.`);
  if (problem) return addMessage(problem, 'error');  // the name and the shots stay: fix it, press Done again
  const record = { model: state.modelKey, name, mean: meanOf(s.shots), shots: s.shots.length, created: new Date().toISOString() };
  const notKept = await saveRecord(record);
  if (!record.kept) record.id = `visit-${++visitIds}`;
  state.added.push(record);
  state.lastShots = s.pixels;
  closeAddPanel();
  refreshAdded();
  const photos = `${record.shots} photo${record.shots === 1 ? '' : 's'}`;
  if (notKept) {
    addMessage(`Added "${name}" from ${photos} for this visit only: ${notKept}, so it is gone once this page is closed.`, 'error');
  } else {
    const few = record.shots < SHOTS_ADVISED ? ` More photos (about ${SHOTS_ADVISED}) recognise it better.` : '';
    addMessage(`Added "${name}" from ${photos}; kept on this device only.${few}`);
  }
  await reclassifyPhoto();
}

function reportAddError(e) {
  state.errors.push(String(e));
  addMessage(`That did not work: ${e.message || e}. Species already added are kept.`, 'error');
}

function wireAddSpecies() {
  $('add-species').addEventListener('click', () => openAddPanel().catch(reportAddError));
  $('add-shot').addEventListener('click', () => takeShot().catch(reportAddError));
  $('add-files').addEventListener('change', (ev) => addPhotos(Array.from(ev.target.files)).catch(reportAddError));
  $('add-panel').addEventListener('submit', (ev) => {
    ev.preventDefault();
    finishAdd().catch(reportAddError);
  });
  $('add-cancel').addEventListener('click', closeAddPanel);
}

// ---- start-up -------------------------------------------------------------------------------

async function main() {
  try {
    state.metadata = await fetchJson('metadata.json');
  } catch (e) {
    throw new Error(
      `Model missing: metadata.json could not be loaded (${e.message}). Serve this page from the export folder ` +
        '(python -m http.server in the folder that holds metadata.json and tfjs_model/).',
    );
  }
  state.size = state.metadata.input.size;
  state.trust = state.metadata.trust || null;  // exports before calibration have none
  $('model-name').textContent = state.metadata.model_name;
  $('calibration').textContent = state.trust && state.trust.calibrated
    ? `confidence calibrated (T = ${state.trust.temperature.toFixed(2)})`
    : 'confidence not calibrated';
  if (state.trust && state.trust.calibrated && state.trust.embedding_stats) {
    state.stats = await loadStats(state.trust.embedding_stats);
  }
  setStatus('Loading the model…');
  let loaded;
  try {
    loaded = await loadModelOnSomeBackend();
  } catch (e) {
    if (isNotFound(e)) {
      throw new Error(`Model missing: tfjs_model/model.json was not found next to this page (${e.message}).`);
    }
    throw e;
  }
  state.model = loaded.model;
  state.backend = loaded.backend;
  canvas.width = canvas.height = state.size;
  state.backendDetail = backendDetail(loaded.backend);
  showPlatform();
  $('backend').textContent = loaded.failures.length
    ? `${state.backendDetail} (fell back: ${loaded.failures.map((f) => f.split(':')[0]).join(', ')} failed)`
    : state.backendDetail;
  setStatus(`Ready: ${state.metadata.num_classes} species, ${state.size}×${state.size} input.`);
  try {
    await initSpecies();
  } catch (e) {  // never stops the page: it classifies without added species
    state.errors.push(String(e));
    addNote(`Added species are off: ${e.message || e}.`);
  }
  wireAddSpecies();
  $('file').addEventListener('change', (ev) => {
    const file = ev.target.files[0];
    ev.target.value = '';  // choosing the same photo again is a new choice (browsers fire no change otherwise)
    classifyFile(file);
  });
  $('camera-button').addEventListener('click', () => startCamera());
  if (params.get('camera') === 'off') {
    $('camera-button').hidden = false;
  } else {
    await startCamera();
  }
  state.status = 'ready';  // after the camera attempt, so its outcome is on the page by now
  // After start-up, so that caching every file does not compete with loading the model.
  state.offlineDone = registerServiceWorker();
}

const ready = main().catch((e) => {
  state.status = 'error';
  state.errors.push(String(e));
  setStatus('Not ready.');
  showMessage(e.message || String(e), 'error');
});

// ---- hooks for tests and benchmarks ----------------------------------------------------------

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function rgbBase64(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) rgb.set(rgba.subarray(i, i + 3), j);
  return toBase64(rgb);
}

// Add a species as the page shows it, and what the tests compare with the Python reference.
function speciesSnapshot() {
  const shown = (id) => ($(id).hidden ? '' : $(id).textContent);
  return {
    addEnabled: !$('add-species').disabled,
    addNote: shown('add-note'),
    addMessage: shown('add-message'),
    addPanelOpen: !$('add-panel').hidden,
    shotButtonShown: !$('add-shot').hidden,
    shotCount: state.adding ? state.adding.shots.length : null,
    shotText: $('add-shot').textContent,
    storage: state.db ? 'indexeddb' : 'this visit only',
    modelKey: state.modelKey,
    added: state.added.map(({ name, shots, created, kept, mean }) => ({ name, shots, created, kept, mean: Array.from(mean) })),
    addedList: Array.from(document.querySelectorAll('#added-list .added-name'), (el) => el.textContent),
    lastShots: state.lastShots.map(rgbBase64),
    embedding: state.lastEmbedding ? Array.from(state.lastEmbedding) : null,
    modelLogits: state.lastLogits ? Array.from(state.lastLogits) : null,
  };
}

window.demo = {
  ready,
  state,
  classifyFile,
  // What the page shows now, and the exact RGB pixels ([size, size, 3], base64) it fed the model for it.
  snapshot() {
    return {
      status: state.status,
      backend: state.backend,
      backendText: $('backend').textContent,
      threads: state.threads,
      cores: state.cores,
      crossOriginIsolated: state.isolated,
      offline: state.offline,
      offlineNote: $('install-note').hidden ? '' : $('install-note').textContent,
      platformText: `${$('cores').textContent} · ${$('isolation').textContent} · ${$('offline').textContent}`,
      message: $('message').hidden ? '' : $('message').textContent,
      verdict: $('verdict').hidden ? '' : $('verdict').textContent,
      verdictClass: $('verdict').className,
      calibrationText: $('calibration').textContent,
      size: state.size,
      last: state.last,
      shownTop5: Array.from(document.querySelectorAll('#top5 .name'), (el) => el.textContent),
      latencyText: $('latency').textContent,
      firstAnswerMs: state.firstAnswerMs,
      pixels: state.lastPixels ? rgbBase64(state.lastPixels) : null,
      errors: state.errors,
      ...speciesSnapshot(),
    };
  },
  // Median ms per frame of the whole per-frame path (crop + resize, predict, read back) over n
  // frames of a fixed synthetic 640x480 picture, after `warmup` untimed frames.
  async benchmark(n = 20, warmup = 3) {
    stopCamera();
    const source = document.createElement('canvas');
    source.width = 640;
    source.height = 480;
    const g = source.getContext('2d');
    const grad = g.createLinearGradient(0, 0, 640, 480);
    grad.addColorStop(0, '#f6bd60');
    grad.addColorStop(1, '#84a59d');
    g.fillStyle = grad;
    g.fillRect(0, 0, 640, 480);
    const times = [];
    for (let i = 0; i < warmup + n; i++) {
      const t0 = performance.now();
      await classify(source, 640, 480, 'benchmark');
      if (i >= warmup) times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return {
      backend: state.backendDetail,
      crossOriginIsolated: window.crossOriginIsolated === true,
      frames: n,
      median_ms: times[Math.floor(n / 2)],
      min_ms: times[0],
    };
  },
};
