#!/usr/bin/env bash
# Builds the converter environment (.venv-export: onnx2tf + tensorflowjs_converter) and
# the Node side (shared/tfjs/node_modules: @tensorflow/tfjs, playwright-core), and
# installs Debian's chromium for the browser test when it is missing and we are root.
# Idempotent: a stamp file skips work already done. Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-export
STAMP=$VENV/.stamp
if [ ! -f "$STAMP" ] || [ requirements-export.txt -nt "$STAMP" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements-export.txt
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps onnx2tf==1.29.24 tensorflowjs==4.22.0
  touch "$STAMP"
fi
if [ ! -f shared/tfjs/node_modules/.stamp ] || [ shared/tfjs/package.json -nt shared/tfjs/node_modules/.stamp ]; then
  (cd shared/tfjs && npm install --no-audit --no-fund --loglevel=error)
  touch shared/tfjs/node_modules/.stamp
fi
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
      || echo "setup_export_env: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup_export_env: /usr/bin/chromium missing (install Debian's chromium for the browser test)" >&2
  fi
fi
