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
  last: null,             // {top5: [{index, name, prob}], decision, scores, ms, source, frame}
  trust: null,            // metadata.trust: {calibrated, temperature, not_sure, not_a_known_flower}
  stats: null,            // {unit_means, means, precision, background_mean, background_precision}: Float32Arrays
                          // (row-major, shapes in metadata.trust.embedding_stats), plus the cached m^T P m terms
  lastPixels: null,       // Uint8ClampedArray RGBA of the size x size input of `last`
  lastEmbedding: null,    // Float32Array [D] of `last`: the pooled features (for adding species on the device)
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

function squaredMahalanobis(x, means, precision, terms) {
  const d = x.length;
  const px = matVec(precision, x, d);
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
  stats.meansTerm = quadTerms(stats.means, stats.precision, d);
  stats.backgroundTerm = quadTerms(stats.background_mean, stats.background_precision, d);
  return stats;
}

function opensetScore(name, logits, probs, embedding, temperature) {
  if (name === 'msp' || name === 'max_logit') return confidenceScore(name, logits, probs);
  if (name === 'energy') {  // T * logsumexp(z / T)
    const m = Math.max(...logits);
    let sum = 0;
    for (const z of logits) sum += Math.exp((z - m) / temperature);
    return m + temperature * Math.log(sum);
  }
  const st = state.stats;
  if (!st) throw new Error(`the ${name} open-set score needs embedding_stats.bin`);
  const d = embedding.length;
  if (name === 'cosine') {  // max over classes of cos(embedding, unit class mean)
    let norm = 0;
    for (const v of embedding) norm += v * v;
    norm = Math.max(Math.sqrt(norm), 1e-12);
    let best = -Infinity;
    for (let c = 0; c < st.unit_means.length / d; c++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += embedding[i] * st.unit_means[c * d + i];
      best = Math.max(best, dot / norm);
    }
    return best;
  }
  const nearest = Math.min(...squaredMahalanobis(embedding, st.means, st.precision, st.meansTerm));
  if (name === 'mahalanobis') return -nearest;
  if (name === 'relative_mahalanobis') {
    return squaredMahalanobis(embedding, st.background_mean, st.background_precision, st.backgroundTerm)[0] - nearest;
  }
  throw new Error(`unknown open-set score ${name}`);
}

// "answer" | "not_sure" | "unknown" (as flowers_jax.trust.Calibration.decide), or "uncalibrated".
function decide(logits, probs, embedding) {
  const t = state.trust;
  if (!t || !t.calibrated) return { decision: 'uncalibrated', scores: {} };
  const known = opensetScore(t.not_a_known_flower.score, logits, probs, embedding, t.temperature);
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
    answer: `${top5[0].name} · ${top5[0].prob >= 0.999 ? '> 99.9' : (top5[0].prob * 100).toFixed(1)}%`,
    not_sure: 'Not sure. It might be one of these:',
    unknown: `This doesn't look like one of the ${n} flowers I know.`,
    uncalibrated: `${top5[0].name}`,
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
    ...shown.map(({ name, prob }) => {
      const li = document.createElement('li');
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = name;
      const percent = document.createElement('span');
      percent.className = 'percent';
      percent.textContent = `${(prob * 100).toFixed(1)}%`;
      const bar = document.createElement('div');
      bar.className = 'bar';
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0, Math.min(100, prob * 100)).toFixed(1)}%`;
      bar.append(fill);
      li.append(label, percent, bar);
      return li;
    }),
  );
  $('latency').textContent = `${ms.toFixed(1)} ms`;
}

// Crop the centred square of `source` (video, image or bitmap), resize, predict, show.
async function classify(source, width, height, kind) {
  const side = Math.min(width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, state.size, state.size);
  const t0 = performance.now();
  const out = tf.tidy(() => {
    const x = tf.browser.fromPixels(canvas).toFloat().expandDims(0);  // RGB 0-255, as the model wants
    return state.model.predict(x);
  });
  const [z, p, e] = await Promise.all([out.logits.data(), out.probabilities.data(), out.embedding.data()]);
  state.lastEmbedding = e;
  tf.dispose(Object.values(out));
  const ms = performance.now() - t0;
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]).slice(0, 5);
  const names = state.metadata.class_names;
  const top5 = order.map((i) => ({ index: i, name: names[i] ?? `class ${i}`, prob: p[i] }));
  const { decision, scores } = decide(z, p, e);
  state.frame += 1;
  state.last = { top5, decision, scores, ms, source: kind, frame: state.frame };
  state.lastPixels = ctx.getImageData(0, 0, state.size, state.size).data.slice();
  renderTop5(top5, ms, decision);
  return state.last;
}

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

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
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
  $('file').addEventListener('change', (ev) => classifyFile(ev.target.files[0]));
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

window.demo = {
  ready,
  state,
  classifyFile,
  // What the page shows now, and the exact RGB pixels ([size, size, 3], base64) it fed the model for it.
  snapshot() {
    const rgba = state.lastPixels;
    let rgb = null;
    if (rgba) {
      rgb = new Uint8Array((rgba.length / 4) * 3);
      for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) rgb.set(rgba.subarray(i, i + 3), j);
    }
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
      pixels: rgb ? toBase64(rgb) : null,
      errors: state.errors,
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
