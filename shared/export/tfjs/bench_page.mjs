// node bench_page.mjs URL: open the latency page (bench_page.html) in headless Chromium
// (Debian's /usr/bin/chromium or $CHROMIUM, driven by playwright-core: no browser download),
// print its JSON result with the browser's version added; page errors end it with an error.
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`Chromium not found at ${executablePath}`);
  process.exit(3);
}
const browser = await chromium.launch({
  executablePath, headless: true,
  // --disable-dev-shm-usage: containers often have a 64 MB /dev/shm
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector('#out[data-result]', { timeout: Number(process.env.BENCH_TIMEOUT_MS || 300000) });
  const result = JSON.parse(await page.$eval('#out', (el) => el.dataset.result));
  if (errors.length && !result.error) result.error = errors.join('; ');
  console.log(JSON.stringify({ ...result, browser: `Chromium ${browser.version()}` }));
} finally {
  await browser.close();
}
