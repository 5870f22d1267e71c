"""The commands: ``streamaug-pack``, ``streamaug-demo``, ``streamaug-bench``, ``streamaug-phantom``.

``streamaug-train`` and ``streamaug-eval`` live with their packages (:mod:`streamaug.train`,
:mod:`streamaug.eval`). Each module here has a ``main(argv=None)`` and runs as ``python -m``.
"""
