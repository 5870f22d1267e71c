"""The commands: ``streamaug-pack``, ``streamaug-demo``, ``streamaug-bench``, ``streamaug-phantom``,
``streamaug-realism``.

``streamaug-train`` and ``streamaug-eval`` live with their packages (:mod:`streamaug.train`,
:mod:`streamaug.eval`). Each command's module here has a ``main(argv=None)`` and runs as ``python -m``
(``pack_csv``, ``pack_mask``, ``pack_out`` and ``bench_measure`` are their parts). Bad
input ends a command with ``error: <message>`` and exit code 2 (:mod:`streamaug._commands`).
"""
