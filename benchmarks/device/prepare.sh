#!/usr/bin/env bash
# Run HERE (a machine with the package registries and ../shared), before a lent GPU's one call:
# downloads the wheels the GPU image lacks into .whl/ and packs part of the BTXRD train split into
# .devdata/btxrd (both ignored by git; they travel with `carry`). Then, through the device tool:
#   run(command="bash benchmarks/device/check.sh", carry=[".whl", ".devdata"], timeout_s=480)
# Options (environment): PYVER (the GPU image's Python, default 3.12), BTXRD (the raw BTXRD folder,
# default ../shared/data/btxrd), ROWS (train images packed, default 1100: about 31 MB, inside the
# 64 MiB that travel with the working tree and the wheels).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
BTXRD=${BTXRD:-../shared/data/btxrd}
ROWS=${ROWS:-1100}
PY=${PY:-python3}

# The GPU image has torch, numpy, numba, scipy, scikit-learn, pillow, tqdm, matplotlib, pytest, pyyaml
# and requests (/work/.library/device/KINDS.md); streamaug's other dependencies travel as wheels.
# Versions: the ones the CPU install resolves today (pip show), so both machines run the same code.
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl webdataset==1.0.2 braceexpand==0.1.7 pydicom==3.0.2 kornia==0.9.0 kornia_rs==0.2.0 \
    torchdata==0.11.0
ls -l .whl

if [ -d "$BTXRD" ]; then
    rm -rf .devdata && mkdir -p .devdata
    "$PY" - "$BTXRD" "$ROWS" <<'PYEOF'
import csv, sys
from pathlib import Path
root, rows = Path(sys.argv[1]).resolve(), int(sys.argv[2])
with open(root / "metadata.csv", newline="") as f:
    reader = csv.DictReader(f)
    train = [r for r in reader if r["split"] == "train"]
    kept = [train[i * len(train) // rows] for i in range(min(rows, len(train)))]  # evenly spaced: the label mix
    fields = reader.fieldnames
with open(".devdata/metadata.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(kept)
print(f"{len(kept)} of the {len(train)} train rows of {root}")
PYEOF
    "$PY" -m streamaug.cli.pack --root "$BTXRD" --metadata .devdata/metadata.csv --out .devdata/btxrd \
        --shard-size 128
    rm .devdata/metadata.csv
    du -sh .devdata/btxrd
else
    echo "no $BTXRD: the GPU check will run on phantom shards it generates there"
fi
du -shc .whl .devdata 2>/dev/null | tail -1
