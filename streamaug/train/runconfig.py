"""A trainer's run config, written once: its command-line options, its resume guard, its log.

The run-config dataclasses (:class:`~streamaug.train.translator.TranslatorRun`,
:class:`~streamaug.train.classifier_data.RunConfig`) are the single source of the trainers'
options: :func:`add_config_arguments` turns every field into an ``argparse`` option (type, default,
``choices``, ``nargs="+"`` for lists, ``--flag/--no-flag`` for bools) with the help text of the
field's ``metadata["help"]`` or of the class docstring's ``Attributes`` section, and
:func:`config_from_args` builds the config back. A numeric field's allowed values are its
``metadata["bound"]`` (:func:`at_least`, :func:`above`, :func:`between`), which :func:`check_bounds`
enforces when the config is made (one message per option, in command-line terms). The resolved
config is saved in every checkpoint; :func:`check_resume` compares it on ``--resume``, and
:func:`check_run_folder` refuses a fresh run into another run's folder and a ``--resume`` with
nothing to resume; :func:`check_device` refuses a device this machine lacks. :class:`JsonlLog` is
the training log, one JSON record a line, flushed per record and trimmed to the checkpoint on resume.

Examples:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Run:
    ...     '''A run.
    ...
    ...     Attributes:
    ...         steps: training steps.
    ...         bf16: autocast to bfloat16.
    ...     '''
    ...     steps: int = 10
    ...     bf16: bool = False
    >>> p = argparse.ArgumentParser()
    >>> add_config_arguments(p, Run)
    >>> config_from_args(Run, p.parse_args(["--steps", "3", "--bf16"]))
    Run(steps=3, bf16=True)
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from streamaug._commands import check_device  # noqa: F401 - the trainers' device check, shared with the commands
from streamaug.models.checkpoint import CheckpointError

__all__ = ["add_config_arguments", "config_from_args", "config_help", "check_resume", "JsonlLog", "Bound",
           "at_least", "above", "between", "check_bounds", "check_device", "check_run_folder", "make_run_folder",
           "option_name"]

C = TypeVar("C")
_ATTRIBUTE = re.compile(r"^ {4}(\w+)(?: \([^)]*\))?: ?(.*)$")


def config_help(cls: type) -> dict[str, str]:
    """Help text per field: ``field(metadata={"help": ...})``, else the docstring's ``Attributes``.

    Args:
        cls: a dataclass with a Google-style docstring.

    Returns:
        ``{field name: help}`` for the fields that have one.
    """
    docs: dict[str, str] = {}
    current, section = None, False
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line.strip() == "Attributes:":
            section = True
        elif section and line.strip() and not line.startswith(" "):
            break  # the next section
        elif section and (match := _ATTRIBUTE.match(line)):
            current = match[1]
            docs[current] = match[2].strip()
        elif section and current and line.startswith(" " * 8):
            docs[current] += " " + line.strip()
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return docs


def _option(tp: Any) -> dict[str, Any]:
    """argparse keywords for a field's resolved type hint (``int | None``, ``list[str]``, ``Literal``, ...)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"cannot make an option of {tp}: one type besides None, please")
        tp, args = inner[0], typing.get_args(inner[0])
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return {"nargs": "+", **_option(args[0])}
    if origin is Literal:
        return {"type": type(args[0]), "choices": list(args)}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"cannot make an option of {tp}: use int, float, str, bool, Literal, a list or X | None")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, required: Iterable[str] = (),
                         defaults: dict[str, Any] | None = None) -> None:
    """Add one option per field of the dataclass ``cls`` (``batch_size`` -> ``--batch-size``).

    Args:
        parser: where to add them.
        cls: the run-config dataclass; field ``metadata["choices"]`` restricts an option's values.
        required: fields the command line must give.
        defaults: command-line defaults that differ from the dataclass's.

    Raises:
        TypeError: a field without help text (add it to the docstring's ``Attributes``) or of a type
            with no option form.
    """
    helps, required, defaults = config_help(cls), set(required), defaults or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in helps:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text: describe it in the Attributes section of "
                            f"the {cls.__name__} docstring (or field metadata 'help')")
        kw = _option(hints[f.name])
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        help_text = helps[f.name].rstrip(".").replace("%", "%%")
        if f.name in required:
            kw["required"] = True
        else:
            default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
            kw["default"] = default
            if default is not None and default != []:
                help_text += " (default: %(default)s)"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=help_text, **kw)


def parse_options(args: argparse.Namespace | Sequence[str] | None,
                  add_arguments: Callable[[argparse.ArgumentParser], None], *, prog: str,
                  description: str | None = None) -> argparse.Namespace:
    """A trainer's options: ``args`` as it is when already parsed, else ``args`` (or ``sys.argv``)
    parsed by a parser that ``add_arguments`` fills (one per trainer, shared by ``python -m`` and tests)."""
    if isinstance(args, argparse.Namespace):
        return args
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return parser.parse_args(args)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The ``cls`` instance of the parsed options (lists stay lists; other attributes are ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def option_name(field_name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Bound:
    """The values a numeric option takes: from ``low`` to ``high`` (None: no limit), each end
    excluded when ``low_open`` / ``high_open``; ``why`` explains a limit that is not obvious.

    Examples:
        >>> b = Bound(0.0, 1.0, high_open=True)
        >>> b.describe(), b.admits(0.0), b.admits(1.0), b.admits(float("nan"))
        ('at least 0 and below 1', True, False, False)
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        """Whether ``value`` (finite) lies within the bound."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """``at least 1``, ``above 0``, ``at least 0 and below 1``, ..."""
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {self.high:g}")
        return " and ".join(parts) or "a finite number"


def at_least(low: float, why: str = "") -> dict[str, Bound]:
    """Field metadata: the option takes values ``>= low``."""
    return {"bound": Bound(low, why=why)}


def above(low: float, why: str = "") -> dict[str, Bound]:
    """Field metadata: the option takes values ``> low``."""
    return {"bound": Bound(low, low_open=True, why=why)}


def between(low: float, high: float, *, high_open: bool = False, why: str = "") -> dict[str, Bound]:
    """Field metadata: the option takes values from ``low`` to ``high`` (``high`` excluded when ``high_open``)."""
    return {"bound": Bound(low, high, high_open=high_open, why=why)}


def check_bounds(config: Any) -> None:
    """Refuse a config whose numeric fields lie outside their ``metadata["bound"]`` (None passes).

    Args:
        config: a run-config dataclass instance.

    Raises:
        ValueError: naming the first such option, its value and what it must be, e.g.
            ``--epochs 0: must be at least 1``.
    """
    for f in dataclasses.fields(config):
        bound = f.metadata.get("bound")
        value = getattr(config, f.name)
        if bound is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{option_name(f.name)} {value!r}: must be a number, {bound.describe()}")
        if not bound.admits(value):
            why = f" ({bound.why})" if bound.why else ""
            raise ValueError(f"{option_name(f.name)} {value:g}: must be {bound.describe()}{why}")


def check_run_folder(out: str | os.PathLike, *, resume: bool, checkpoints: Sequence[str], resume_from: str) -> None:
    """Refuse a fresh run into a folder that holds another run's checkpoints (their files would
    outlive the run: a stale ``best.pt``), and a ``--resume`` with nothing to resume.

    Args:
        out: the run folder (``--out``).
        resume: whether ``--resume`` was given.
        checkpoints: the checkpoint files a run of this trainer writes (``best.pt``, ``last.pt``).
        resume_from: the one of them that ``--resume`` continues from.

    Raises:
        ValueError: ``out`` is a file.
        CheckpointError: (a ``ValueError``) a fresh run into a folder with checkpoints, or ``--resume``
            without ``resume_from``; the message names the folder, the files and the fix.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: pass a folder (it is created when missing)")
    found = [name for name in checkpoints if (folder / name).is_file()]
    if resume and not (folder / resume_from).is_file():
        if found:
            raise CheckpointError(f"{folder}: --resume needs {resume_from}, which holds the trainer state (optimizer, "
                                  f"random state); this folder has only {', '.join(found)} (weights for inference). "
                                  f"Restore {resume_from}, or start a new run with another --out (without --resume)")
        looked = f" (looked for {', '.join(checkpoints)})" if len(checkpoints) > 1 else ""
        raise CheckpointError(f"--out {folder}: nothing to resume: it holds no {resume_from}{looked}; check --out, "
                              "or start a new run without --resume")
    if not resume and found:
        raise CheckpointError(f"--out {folder} holds the checkpoints of an earlier run ({', '.join(found)}): pass "
                              "--resume to continue that run, or another --out for a new one")


def check_resume(path: str | os.PathLike, saved: dict[str, Any] | None, given: Any) -> None:
    """Refuse to resume a run whose config differs from the one saved in its checkpoint.

    Fields named in ``type(given).RESUMABLE`` (e.g. ``steps``, ``device``) may differ. A field the
    saved config lacks (added to the config class after the checkpoint was written) counts as its default.

    Args:
        path: the checkpoint (for the message).
        saved: the run config stored in it (``dataclasses.asdict`` of the original run), or None.
        given: the run config of this invocation.

    Raises:
        CheckpointError: nothing saved, or the differing fields, each with its saved and given value.
    """
    if saved is None:
        raise CheckpointError(f"{path}: no run config stored, so it cannot be resumed; "
                              "start a new run (another --out, without --resume)")
    resumable = getattr(type(given), "RESUMABLE", ())
    # a field added after the checkpoint was written counts as its default (what the run used)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(given)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    diff = {k: (saved.get(k, defaults.get(k)), v) for k, v in dataclasses.asdict(given).items()
            if k not in resumable and saved.get(k, defaults.get(k)) != v}
    if diff:
        fields = "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path}: --resume with a different config ({fields}); rerun with the original "
                              f"options (only {', '.join(resumable)} may change) or start a new run with another --out")


def make_run_folder(out: str | os.PathLike) -> Path:
    """Create the run folder ``out`` (and its parents) when missing; returns it.

    Raises:
        ValueError: it cannot be created (a file in the way, no permission), naming ``--out`` and why.
    """
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {folder}: cannot create the run folder ({err.strerror or err}); pass a folder "
                         "you can write to") from None
    return folder


class JsonlLog:
    """An append-only JSON-lines log, flushed after every record (a killed run keeps what it logged).

    On opening, records whose ``key`` is above ``upto`` are dropped (with a torn last line), so a
    run resumed from a checkpoint at ``upto`` logs no record twice; ``upto`` below the first
    record's value starts the log afresh.

    Args:
        path: the ``.jsonl`` file; created with its folder.
        key: the record field that orders the log (``"step"``, ``"epoch"``).
        upto: the last value to keep (the checkpoint's step / epoch).
    """

    def __init__(self, path: str | os.PathLike, key: str, upto: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)[key] <= upto:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 - open for the run's life; close() closes it

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it to the OS."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
