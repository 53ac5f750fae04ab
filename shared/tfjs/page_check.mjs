// node page_check.mjs URL IMAGE [BACKEND]
// Opens the bundle's demo page in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core: no browser download), loads IMAGE through the file input, waits for the
// result and prints {"top1", "probability", "conclusive", "backend", "top5"} as JSON.
import { chromium } from 'playwright-core';

const [url, image] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],  // playwright gives it a fresh profile dir
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: 60000 });
  await page.setInputFiles('#file', image);
  await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 60000 });
  const result = await page.evaluate(() => {
    const v = document.getElementById('verdict');
    return { state: document.getElementById('status').dataset.state, status: document.getElementById('status').textContent,
             top1: v.dataset.top1, probability: Number(v.dataset.probability), conclusive: v.dataset.conclusive === 'true',
             text: v.textContent, backend: window.tf ? tf.getBackend() : null,
             top5: Array.from(document.querySelectorAll('#top5 li')).map((li) => li.dataset.label) };
  });
  result.errors = errors;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
