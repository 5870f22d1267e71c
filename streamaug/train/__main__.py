"""``python -m streamaug.train {translator,classifier,scorer,inpainter} ...`` (console script ``streamaug-train``)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "translator": ("streamaug.train.translator", "train a UNIT normal->lesion patch translator"),
    "classifier": ("streamaug.train.classifier", "train a DRN classifier, optionally on the lesion stream"),
    "scorer": ("streamaug.train.scorer", "train a lesion-vs-normal patch scorer: the site filter of synthesis"),
    "inpainter": ("streamaug.train.inpainter", "train a pix2pix inpainter: new context around kept lesion boxes"),
}


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), log progress to stderr, run the chosen trainer."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m streamaug.train")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the command that runs
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from streamaug._commands import USER_ERRORS, message
    from streamaug.synth.lesion_stream import NoAcceptedCandidates

    try:
        module.main(args)
    except (*USER_ERRORS, NoAcceptedCandidates) as err:  # bad input, its fix in the message: no traceback
        if os.environ.get("STREAMAUG_TRACEBACK"):
            raise
        parser.exit(2, f"{parser.prog} {args.command}: error: {message(err)}\n")


if __name__ == "__main__":
    main()
