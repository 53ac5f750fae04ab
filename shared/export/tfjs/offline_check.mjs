// node offline_check.mjs URL IMAGE: the demo page as a visitor gets it, in headless Chromium
// (Debian's /usr/bin/chromium or $CHROMIUM, driven by playwright-core). Opens URL with no forced
// backend, waits for the model and for the service worker to take over, then cuts the network,
// reloads and classifies IMAGE offline. Prints one JSON object: the first visit's backend, its
// reason, threads and crossOriginIsolated, the cache names, and the offline visit's state and top-1.
import { chromium } from 'playwright-core';

const [url, image] = process.argv.slice(2);
const timeout = Number(process.env.PAGE_TIMEOUT_MS || 600000);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const ready = '#status[data-state="ready"], #status[data-state="error"]';
const state = (page) => page.evaluate(() => ({
  state: document.getElementById('status').dataset.state,
  status: document.getElementById('status').textContent,
  backend: window.plantid.backend || null, reason: window.plantid.backend_reason || null,
  threads: window.plantid.threads ?? null, isolated: !!window.crossOriginIsolated,
}));
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector(ready, { timeout });
  const first = await state(page);
  // the worker installs (caching every file) and takes over; then the network goes
  await page.evaluate(() => navigator.serviceWorker.ready);
  const caches = await page.evaluate(() => caches.keys());
  await context.setOffline(true);
  await page.reload();
  await page.waitForSelector(ready, { timeout });
  const offline = await state(page);
  let top1 = null;
  if (offline.state === 'ready') {
    await page.setInputFiles('#file', image);
    await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout });
    top1 = await page.$eval('#verdict', (v) => v.dataset.top1);
    offline.state = await page.$eval('#status', (s) => s.dataset.state);
  }
  console.log(JSON.stringify({ first, caches, offline, top1, errors }));
} finally {
  await browser.close();
}
