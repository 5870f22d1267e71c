"""streamaug.train.runconfig: trainer options generated from the run configs (every option has help,
every field an option), the resume guard, and the flushed, resume-trimmed JSON-lines log."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from streamaug.models.checkpoint import CheckpointError
from streamaug.train import classifier, translator
from streamaug.train.classifier_data import RunConfig
from streamaug.train.runconfig import JsonlLog, add_config_arguments, check_resume, config_from_args, config_help
from streamaug.train.translator import TranslatorRun

TRAINERS = [(translator, TranslatorRun), (classifier, RunConfig)]


def _parser(module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p


@pytest.mark.parametrize(("module", "cls"), TRAINERS, ids=["translator", "classifier"])
def test_every_option_has_help_and_every_field_an_option(module, cls):
    actions = [a for a in _parser(module)._actions if a.dest != "help"]
    no_help = [a.option_strings for a in actions if not (a.help and a.help.strip())]
    assert not no_help, f"options without help: {no_help}"
    dests = {a.dest for a in actions}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in dests]
    assert not missing, f"{cls.__name__} fields without an option: {missing}"
    assert dests - {f.name for f in dataclasses.fields(cls)} == {"resume"}


@pytest.mark.parametrize(("module", "cls"), TRAINERS, ids=["translator", "classifier"])
def test_options_round_trip_to_the_config(module, cls):
    required = {TranslatorRun: ["--shards", "a.tar", "b.tar", "--out", "o"],
                RunConfig: ["--train-shards", "t", "--val-shards", "v", "--out", "o"]}[cls]
    args = _parser(module).parse_args(required)
    cfg = config_from_args(cls, args)
    defaults = dataclasses.asdict(cls())
    given = dataclasses.asdict(cfg)
    changed = {k for k in given if given[k] != defaults[k]}
    # only the required options and the translator's CLI split default differ from the dataclass
    assert changed == {f.lstrip("-").replace("-", "_") for f in required if f.startswith("--")} | (
        {"split"} if cls is TranslatorRun else set())


def test_translator_cli_has_the_options_its_config_had_without_them():
    args = _parser(translator).parse_args(["--shards", "x.tar", "--out", "o", "--min-intensity", "0.3",
                                           "--blend-n", "4", "--positives", "k1", "k2", "--bf16", "--preset", "small"])
    run = config_from_args(TranslatorRun, args)
    assert (run.min_intensity, run.blend_n, run.positives, run.bf16, run.preset) == (0.3, 4.0, ["k1", "k2"], True,
                                                                                      "small")
    with pytest.raises(SystemExit):
        _parser(translator).parse_args(["--shards", "x.tar", "--out", "o", "--preset", "huge"])
    with pytest.raises(SystemExit):
        _parser(classifier).parse_args(["--train-shards", "t", "--val-shards", "v", "--out", "o", "--stream", "x"])


@dataclass
class _Toy:
    """A toy config.

    Attributes:
        steps: how many steps,
            over two lines.
        ratio: a ratio in 100 %.
        names: some names.
        tag: a tag.
    """

    steps: int = 3
    ratio: float | None = None
    names: list[str] = field(default_factory=list)
    tag: str = field(default="a", metadata={"help": "from metadata", "choices": ("a", "b")})
    flag: bool = field(default=False, metadata={"help": "a switch"})


def test_help_from_docstring_and_metadata_types_and_choices():
    assert config_help(_Toy) == {"steps": "how many steps, over two lines.", "ratio": "a ratio in 100 %.",
                                 "names": "some names.", "tag": "from metadata", "flag": "a switch"}
    p = argparse.ArgumentParser()
    add_config_arguments(p, _Toy, required=("names",), defaults={"steps": 5})
    cfg = config_from_args(_Toy, p.parse_args(["--names", "x", "y", "--ratio", "0.5", "--tag", "b", "--flag"]))
    assert cfg == _Toy(steps=5, ratio=0.5, names=["x", "y"], tag="b", flag=True)
    assert config_from_args(_Toy, p.parse_args(["--names", "x", "--no-flag"])).flag is False
    p.format_help()  # '%' in help text is escaped


def test_a_field_without_help_is_an_error():
    @dataclass
    class Bare:
        """No attributes documented."""

        steps: int = 1

    with pytest.raises(TypeError, match=r"Bare\.steps has no help text"):
        add_config_arguments(argparse.ArgumentParser(), Bare)


def test_check_resume_names_the_checkpoint_and_the_fields(tmp_path):
    run = TranslatorRun(shards=["a"], steps=10)
    saved = dataclasses.asdict(run)
    check_resume(tmp_path / "t.pt", saved, dataclasses.replace(run, steps=20, device="cuda"))  # resumable
    with pytest.raises(CheckpointError, match=r"t\.pt: --resume with a different config \(s: saved 1\.0, given 2\.0; "
                                              r"seed: saved 0, given 1\)"):
        check_resume(tmp_path / "t.pt", saved, dataclasses.replace(run, s=2.0, seed=1))
    with pytest.raises(CheckpointError, match=r"t\.pt: no run config stored"):
        check_resume(tmp_path / "t.pt", None, run)


def test_check_resume_reads_a_field_an_older_checkpoint_lacks_as_its_default(tmp_path):
    run = TranslatorRun(shards=["a"], steps=10)
    saved = dataclasses.asdict(run)
    del saved["seed"]  # written before the field existed: the run used its default
    check_resume(tmp_path / "t.pt", saved, run)
    with pytest.raises(CheckpointError, match=r"seed: saved 0, given 3"):
        check_resume(tmp_path / "t.pt", saved, dataclasses.replace(run, seed=3))


def test_jsonl_log_flushes_each_record_and_trims_past_the_checkpoint(tmp_path):
    path = tmp_path / "run" / "losses.jsonl"
    log = JsonlLog(path, "step", upto=0)
    log.write({"step": 1})
    assert json.loads(path.read_text()) == {"step": 1}  # on disk before close: a kill -9 keeps it
    for step in (2, 3, 4):
        log.write({"step": step})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 5, "gen"')  # a line torn by a kill
    with JsonlLog(path, "step", upto=2) as log:
        log.write({"step": 3})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    JsonlLog(path, "step", upto=0).close()  # a fresh run starts the log afresh
    assert path.read_text() == ""
