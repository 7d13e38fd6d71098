#!/usr/bin/env bash
# Wheel-install check (issue 16): build the sdist and the wheel (no warnings allowed, twine check),
# install the wheel WITHOUT extras into a fresh virtual environment (torch 2.13.0 first), and run
# `s2s annotate` on the bundled sample folder in-process and with --workers 2; .ci/wheel_check.py
# checks every output file and that both runs wrote the same bytes.
#   bash .ci/wheel_check.sh            (PYTHON=python3, BUILD_PY=.venv/bin/python by default)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
BUILD_PY=${BUILD_PY:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/s2s-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
step() { echo "wheel check [$(( $(date +%s) - t0 )) s] $*"; }
# free disk where the venv (torch: ~2 GB) goes: a CI run once stopped with "No space left on device"
df -h "$WORK" "$REPO" | sed 's/^/wheel check: disk /'

step "python -m build"
# PYTHONDONTWRITEBYTECODE makes setuptools print 'byte-compiling is disabled' warnings: not ours.
env -u PYTHONDONTWRITEBYTECODE "$BUILD_PY" -m build --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; exit 1; }
tail -n 1 "$WORK/build.log"
if grep -in "warn" "$WORK/build.log"; then echo "wheel check: python -m build printed warnings" >&2; exit 1; fi
"$BUILD_PY" -m twine check --strict "$WORK"/dist/*
wheel=$(ls "$WORK"/dist/*.whl)
rm -rf build  # setuptools' build folder of this checkout (ignored by git)

step "fresh venv: torch 2.13.0, then the wheel without extras"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --no-cache-dir --upgrade pip
"$VPY" -m pip install -q --no-cache-dir "torch==2.13.0"
"$VPY" -m pip install -q --no-cache-dir "$wheel"
"$VPY" -m pip check
"$WORK/venv/bin/s2s" --version

# the sample folder inside the installed package, run from outside the checkout
SAMPLE=$(cd "$WORK" && "$VPY" -c "import napari_s2s.sample_data as s, pathlib; print(pathlib.Path(s.__file__).parent / 'damond_pancreas_toy')")
case "$SAMPLE" in "$WORK"/venv/*) ;; *) echo "wheel check: samples not from the wheel: $SAMPLE" >&2; exit 1;; esac
EXTRA=()
# the toy crops carry 5 of the model's 37 markers: newer versions want that allowed explicitly
if "$WORK/venv/bin/s2s" annotate --help | grep -q -- "--allow-partial-panel"; then EXTRA+=(--allow-partial-panel); fi
cd "$WORK"
step "s2s annotate (in-process)"
"$WORK/venv/bin/s2s" annotate "$SAMPLE" -o "$WORK/out_inproc" --device cpu "${EXTRA[@]}"
step "s2s annotate --workers 2"
"$WORK/venv/bin/s2s" annotate "$SAMPLE" -o "$WORK/out_workers" --device cpu --workers 2 "${EXTRA[@]}"
step "checking the outputs"
"$VPY" "$REPO/.ci/wheel_check.py" "$SAMPLE" "$WORK/out_inproc" "$WORK/out_workers" "$REPO"
step "a raw .txt without the imc extra: one line, exit 1"
if "$VPY" -c "import readimc" 2>/dev/null; then echo "wheel check: readimc came without the imc extra" >&2; exit 1; fi
RAW="$REPO/tests/data/imc_testdata"
if "$WORK/venv/bin/s2s" measure "$RAW/raw/20210305_NE_mockData1/20210305_NE_mockData1_ROI_001_1.txt" \
     "$RAW/steinbock/masks/20210305_NE_mockData1_001.tiff" -o "$WORK/raw.csv" > "$WORK/raw.log" 2>&1; then
  echo "wheel check: a .txt was read without readimc" >&2; exit 1
fi
cat "$WORK/raw.log"
if [ "$(wc -l < "$WORK/raw.log")" -ne 1 ] || ! grep -q "napari-s2s\[imc\]" "$WORK/raw.log"; then
  echo "wheel check: expected one line naming the imc extra" >&2; exit 1
fi
step "passed"
