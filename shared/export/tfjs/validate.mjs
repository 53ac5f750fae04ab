// node validate.mjs BUNDLE_DIR INPUT.bin N,H,W,C OUTPUT.bin [REPEATS] [BACKEND] [WARMUP]
// Runs the bundle on float32 NHWC inputs (already preprocessed) with the real TF.js
// runtime (BACKEND: cpu = pure JS, the default; wasm = @tensorflow/tfjs-backend-wasm),
// writes the logits as float32, prints {"backend", "median_ms", "warmup", "repeats", "times_ms",
// "runtime": "node", "tfjs", "node"} as JSON (latency: the first image, REPEATS runs after WARMUP
// warm-up runs, default 20 and 3; REPEATS 0: logits only, median_ms null).
import { readFileSync, writeFileSync } from 'node:fs';
import { loadBundle, tf } from './load_bundle.mjs';

const [dir, inputPath, shapeText, outputPath, repeatsText, backendName, warmupText] = process.argv.slice(2);
const shape = shapeText.split(',').map(Number);
const repeats = Number(repeatsText || 20);
const backend = backendName || 'cpu';
if (backend === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
if (!(await tf.setBackend(backend))) throw new Error(`TF.js backend ${backend} could not be initialised`);
await tf.ready();
const model = await loadBundle(dir);
const buf = readFileSync(inputPath);
const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
const [n, h, w, c] = shape;
const per = h * w * c;
if (data.length !== n * per) throw new Error(`input has ${data.length} floats, expected ${n}x${h}x${w}x${c}`);
const out = [];
for (let i = 0; i < n; i++) {
  const x = tf.tensor4d(data.slice(i * per, (i + 1) * per), [1, h, w, c]);
  const y = model.predict(x);
  out.push(...(await y.data()));
  tf.dispose([x, y]);
}
writeFileSync(outputPath, Buffer.from(new Float32Array(out).buffer));
const x = tf.tensor4d(data.slice(0, per), [1, h, w, c]);
const warmup = Number(warmupText || 3);
for (let i = 0; i < warmup; i++) { const y = model.predict(x); await y.data(); tf.dispose(y); }
const times = [];
for (let i = 0; i < repeats; i++) {
  const t0 = performance.now();
  const y = model.predict(x);
  await y.data();
  times.push(performance.now() - t0);
  tf.dispose(y);
}
const sorted = [...times].sort((a, b) => a - b);
const mid = Math.floor(sorted.length / 2);
// no timed runs (REPEATS 0: a parity-only chunk): no median
const median = !sorted.length ? null : sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
console.log(JSON.stringify({ backend: tf.getBackend(), median_ms: median, warmup, repeats, times_ms: times,
                             runtime: 'node', tfjs: tf.version.tfjs, node: process.version }));
