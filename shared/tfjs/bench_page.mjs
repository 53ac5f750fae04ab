// node bench_page.mjs URL: open the latency page in headless Chromium, print its JSON result.
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForSelector('#out[data-result]', { timeout: 300000 });
  console.log(await page.$eval('#out', (el) => el.dataset.result));
} finally {
  await browser.close();
}
