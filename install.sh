#!/usr/bin/env bash
# Create .venv (or $CAMGAP_VENV) and install camgap with its test and extra dependencies.
set -euo pipefail
cd "$(dirname "$0")"
venv="${CAMGAP_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$py" -m pip install -q -e '.[test,ray,saliency,parquet]'
# grad-cam (a test oracle) pulls opencv-python; both provide cv2, and only the contrib build has cv2.saliency.
if ! "$py" -c "import cv2; cv2.saliency" 2>/dev/null; then
  ver=$("$py" -m pip show opencv-contrib-python-headless | sed -n 's/^Version: //p')
  "$py" -m pip install -q --force-reinstall --no-deps "opencv-contrib-python-headless==$ver"
fi
"$py" -c "import camgap, torch, cv2; cv2.saliency; print('camgap', camgap.__version__, 'torch', torch.__version__)"
