#!/usr/bin/env bash
# Create .venv (or $CAMGAP_VENV) and install camgap with its runtime extras (Ray, OpenCV saliency, parquet, WeightWatcher).
#   bash install.sh          camgap and its runtime extras
#   bash install.sh --test   also the test dependencies (pytest, ruff and the oracles grad-cam, captum)
# A CPU-only torch installed into the venv beforehand (README) is kept: 2.14.1+cpu satisfies torch==2.14.1.
set -euo pipefail
cd "$(dirname "$0")"
with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    *) echo "install.sh: unknown option $arg (known: --test)" >&2; exit 2 ;;
  esac
done
venv="${CAMGAP_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
if [ "$with_tests" = 1 ]; then
  "$py" -m pip install -q -e '.[ray,saliency,parquet,weightwatcher,test]'
  # One OpenCV distribution only: opencv-contrib-python-headless (the saliency extra) provides cv2 with
  # cv2.saliency. grad-cam requires opencv-python, which installs a second copy of cv2 without saliency
  # over the first; so grad-cam goes in without its dependencies, and the test extra lists the real ones
  # (ttach, scikit-learn; torch, numpy, matplotlib, Pillow, tqdm come with camgap). `pip check` reports
  # "grad-cam 1.5.5 requires opencv-python, which is not installed": expected, cv2 is the contrib build.
  "$py" -m pip install -q --no-deps grad-cam==1.5.5
else
  "$py" -m pip install -q -e '.[ray,saliency,parquet,weightwatcher]'
fi
"$py" - <<'EOF'
import importlib.metadata as md
import camgap, cv2, torch
cv2.saliency  # AttributeError when a non-contrib OpenCV owns cv2
opencv = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("opencv"))
assert len(opencv) == 1, f"more than one OpenCV distribution installed: {opencv}"
print("camgap", camgap.__version__, "torch", torch.__version__, "opencv", cv2.__version__, f"({opencv[0]})")
EOF
