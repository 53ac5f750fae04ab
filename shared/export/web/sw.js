// The demo page's service worker: the bundle (model, labels, calibration, preprocessing, the
// page, TF.js and its WASM files) is cached on the first visit, so identification works
// outdoors without coverage. Written into each bundle by the export (shared/export/offline.py)
// with that bundle's version in the cache name and its file list: a new model is a new sw.js,
// which the browser installs on the next visit with network, and the old cache is deleted.
const CACHE = 'plantid-__PLANTID_VERSION__';
const FILES = __PLANTID_FILES__;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith('plantid-') && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET' || new URL(request.url).origin !== self.location.origin) return;
  // Cache first: within one version every file is immutable; anything else goes to the network.
  event.respondWith(
    caches.open(CACHE)
      .then((cache) => cache.match(request, { ignoreSearch: true }))
      .then((hit) => hit || fetch(request)),
  );
});
