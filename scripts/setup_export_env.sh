#!/usr/bin/env bash
# Builds what the export phase needs beside the main .venv:
#  - .venv-export: the converters (onnx2tf, tensorflowjs_converter). TensorFlow 2.19 needs
#    protobuf < 6 and kfp 2.17 needs >= 6.31, so they live in a venv of their own, installed
#    in two steps as ../shared/notes/export-toolchain-constraints.txt says (pins in
#    requirements-export.txt; onnx2tf and tensorflowjs with --no-deps: their own pins break
#    the chain);
#  - shared/export/tfjs/node_modules: @tensorflow/tfjs, the WASM backend, playwright-core (npm ci);
#  - Debian's chromium for the browser test and benchmark, when missing and we are root.
# Idempotent: stamp files skip what is already done (a re-run takes well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-export
STAMP=$VENV/.stamp

if [ ! -f "$STAMP" ] || [ requirements-export.txt -nt "$STAMP" ]; then
  echo "setup_export_env: building $VENV (TensorFlow, onnx2tf, tensorflowjs; about a minute)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements-export.txt
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps onnx2tf==1.29.24 tensorflowjs==4.22.0
  "$VENV/bin/onnx2tf" -h >/dev/null && "$VENV/bin/tensorflowjs_converter" --version >/dev/null
  touch "$STAMP"
fi

NM=shared/export/tfjs/node_modules
if [ ! -f "$NM/.stamp" ] || [ shared/export/tfjs/package-lock.json -nt "$NM/.stamp" ]; then
  if ! command -v npm >/dev/null; then
    echo "setup_export_env: npm not found: install Node.js 20 (e.g. apt-get install nodejs npm)" >&2
    exit 1
  fi
  (cd shared/export/tfjs && npm ci --no-audit --no-fund --loglevel=error)
  touch "$NM/.stamp"
fi

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup_export_env: installing Debian's chromium (browser test and benchmark)"
    { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } \
      || echo "setup_export_env: could not install chromium; tests/unit/export/test_demo_page.py will be skipped" >&2
  else
    echo "setup_export_env: /usr/bin/chromium missing and not root: install Debian's chromium" \
         "(apt-get install chromium) or tests/unit/export/test_demo_page.py will be skipped" >&2
  fi
fi
echo "setup_export_env: ready ($VENV/bin: onnx2tf, tensorflowjs_converter; $NM; /usr/bin/chromium)"
