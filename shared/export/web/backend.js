// The TF.js backend a page runs on, chosen as the page opens (index.html and the export's
// latency page both load this file, so the latency gate measures the choice people get).
// A forced name (?backend=) is used as is; otherwise WebGL only on a hardware GPU: a software
// rasteriser (SwiftShader, llvmpipe: headless Chromium, and many laptops and phones without a
// usable GPU driver) runs WebGL on the CPU 10-20x slower than WASM; else WASM (SIMD, threaded
// when the page is cross-origin isolated), else cpu. Returns {name, reason, threads}.
const SOFTWARE_GL = /swiftshader|llvmpipe|softpipe|software|basic render|offscreen/i;

function webglRenderer() {  // the GPU's name as WebGL reports it; null without WebGL
  try {
    const canvas = document.createElement('canvas');
    const gl = canvas.getContext('webgl2') || canvas.getContext('webgl');
    if (!gl) return null;
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    return String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  } catch (e) { return null; }
}

function backendOrder(asked) {
  if (asked) return [[asked], `asked for ${asked} (?backend=)`];
  const renderer = webglRenderer();
  if (renderer && !SOFTWARE_GL.test(renderer)) return [['webgl', 'wasm', 'cpu'], `hardware WebGL (${renderer})`];
  return [['wasm', 'cpu'], renderer ? `WebGL is software-rendered (${renderer}): WASM is faster` : 'no WebGL: WASM'];
}

async function plantidBackend(asked) {
  const [order, reason] = backendOrder(asked);
  if (tf.wasm) tf.wasm.setWasmPaths(new URL('.', location.href).href);
  for (const name of order) {
    try {
      if (await tf.setBackend(name)) {
        await tf.ready();
        const threads = name === 'wasm' && tf.wasm.getThreadsCount ? tf.wasm.getThreadsCount() : null;
        return { name, reason: name === order[0] ? reason : `${reason}; ${order[0]} failed`, threads };
      }
    } catch (e) { /* next one */ }
  }
  throw new Error('no TF.js backend could be initialised (tried ' + order.join(', ') + ')');
}

