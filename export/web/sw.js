// Service worker: keeps the page, TF.js and the model on the device so the app opens and
// classifies with no network after one visit.
//
// The exporter (flowers_jax/export/web.py) fills in VERSION (a hash of every file below) and
// FILES. A new export therefore changes this script's bytes, the browser installs the new
// worker, which caches the new files under a new name and deletes the old caches.
// Browsers run a service worker only on a trusted origin: https with a certificate the device
// trusts, or localhost (docs/design.md, §browser).
'use strict';

const VERSION = 'unversioned';
const FILES = [];
const PREFIX = 'flowers-jax-';
const CACHE = PREFIX + VERSION;
const SCOPE = new URL(self.registration.scope);
const INDEX = new URL('index.html', SCOPE).href;

self.addEventListener('install', (event) => {
  // Every file or none: a half-cached model would fail offline later, so addAll's all-or-nothing.
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

// Cache first (the cache holds one consistent export), the network for anything else (e.g. the
// CA certificate). Opening the page with a query (?backend=wasm) gets the cached index.html.
self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== SCOPE.origin) return;
  const page = url.pathname === SCOPE.pathname || url.href.split('?')[0] === INDEX;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => (await cache.match(page ? INDEX : request)) || fetch(request)),
  );
});
