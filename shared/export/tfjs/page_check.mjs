// node page_check.mjs URL IMAGE [IMAGE...]
// Opens the bundle's demo page in headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM,
// driven by playwright-core: no browser download; playwright gives it a fresh profile dir),
// loads each IMAGE through the file input, waits for the result and prints a JSON list of
// {"state", "top1", "probability", "conclusive", "label", "text", "backend", "top5", "errors"}.
import { chromium } from 'playwright-core';

const [url, ...images] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: Number(process.env.PAGE_TIMEOUT_MS || 600000) });
  const results = [];
  const init = await page.$eval('#status', (s) => ({ state: s.dataset.state, status: s.textContent }));
  // A page that could not load the model classifies nothing: report its error for every image.
  for (const image of init.state === 'error' ? [] : images) {
    await page.evaluate(() => { document.getElementById('status').dataset.state = 'ready'; });
    await page.setInputFiles('#file', image);
    await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: Number(process.env.PAGE_TIMEOUT_MS || 600000) });
    const r = await page.evaluate(() => {
      const v = document.getElementById('verdict');
      const s = document.getElementById('status');
      return { state: s.dataset.state, status: s.textContent, backend: s.dataset.backend || null,
               top1: v.dataset.top1, probability: Number(v.dataset.probability),
               conclusive: v.dataset.conclusive === 'true', label: v.dataset.label, text: v.textContent,
               top5: Array.from(document.querySelectorAll('#top5 li')).map((li) => li.dataset.label),
               top5_probabilities: Array.from(document.querySelectorAll('#top5 li')).map((li) => Number(li.dataset.probability)) };
    });
    results.push({ image, ...r, errors: [...errors] });
  }
  console.log(JSON.stringify(init.state === 'error' ? images.map((image) => ({ image, ...init, errors })) : results));
} finally {
  await browser.close();
}
