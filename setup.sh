#!/usr/bin/env bash
# Creates the project's virtualenv (.venv), installs the dependencies, and fills data/ from ../shared.
set -euo pipefail
cd "$(dirname "$0")"
shared=${SHARED_DIR:-../shared}
python=${PYTHON:-python3}

# The pinned transformers, numpy, scikit-learn and matplotlib need Python 3.11, and so does the code
# (hashlib.file_digest): refuse an older one before anything is created or installed.
if [ -x .venv/bin/python ]; then
  using=.venv/bin/python advice="Remove .venv, install a newer Python and run PYTHON=python3.11 bash setup.sh"
else
  using=$python advice="Install a newer Python and run PYTHON=python3.11 bash setup.sh"
fi
version=$("$using" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || version=""
found="is ${version:-not found, or does not run}"
IFS=. read -r major minor _ <<< "${version:-0.0.0}"
if (( major < 3 || (major == 3 && minor < 11) )); then
  echo "setup: Python 3.11 or newer is needed; $using $found. $advice" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
torch_pin=$(grep -E '^torch==' requirements.txt)
if command -v nvidia-smi >/dev/null 2>&1; then
  "${pip[@]}" "$torch_pin"
else
  # PyPI's Linux torch wheel pulls gigabytes of CUDA libraries; without a GPU take the CPU build
  # (PyTorch's CPU index, or a local CPU wheel that pip is configured to find).
  "${pip[@]}" "$torch_pin" --extra-index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 15 \
    || "${pip[@]}" "$torch_pin"
fi
"${pip[@]}" -r requirements.txt

mkdir -p data
if [ -d "$shared/data" ]; then
  cp -f "$shared"/data/*.csv "$shared"/data/*.txt data/
  echo "setup: copied the course data from $shared/data into data/"
  if [ ! -f data/quora-train.csv ] && [ -d "$shared/data/quora-sample" ]; then
    cp -f "$shared"/data/quora-sample/quora-*.csv data/
    echo "setup: the full Quora files are absent; data/quora-*.csv is the 14k/2k/2k sample from $shared/data/quora-sample"
  fi
else
  echo "setup: $shared/data not found. Copy the course data (ids-sst-*.csv, ids-cfimdb-*.csv, quora-*.csv,"
  echo "       sonnets*.txt, from the CS224N GPT-2 final project's data/ folder) into data/."
fi
if [ -d "$shared/gpt2-tokenizer" ]; then
  mkdir -p data/gpt2-tokenizer
  cp -f "$shared"/gpt2-tokenizer/vocab.json "$shared"/gpt2-tokenizer/merges.txt data/gpt2-tokenizer/
  echo "setup: GPT-2 tokenizer files copied into data/gpt2-tokenizer"
else
  echo "setup: no $shared/gpt2-tokenizer; the scripts will fetch the gpt2 tokenizer from the Hugging Face hub"
fi
echo "setup: done. Run the tests with: .venv/bin/python -m pytest"
