"""Run the whole benchmark suite (same as ``python -m streamaug.cli.bench``).

Usage: ``python benchmarks/run_all.py [--quick] [--out results.json] [--shards DIR] [--no-dicom]``

See ``streamaug/cli/bench.py`` (the suite) and ``streamaug/cli/bench_measure.py`` (how each number is measured),
and ``benchmarks/RESULTS.md`` for recorded runs.
"""
from __future__ import annotations

from streamaug.cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
