"""The shape of the command line: one `register(subparsers)` per command module, one error type,
and a `run` path that loads no offline command."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.__main__ import COMMAND_MODULES, main

OFFLINE = (
    "worker.cli.ab",
    "worker.cli.dataset",
    "worker.cli.judge",
    "worker.cli.retrain",
    "worker.cli.routing",
    "worker.training.dataset",
    "worker.training.retrain",
)


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_every_command_module_registers_alike(name: str) -> None:
    register = importlib.import_module(name).register
    params = list(inspect.signature(register).parameters.values())
    assert [p.name for p in params] == ["subparsers"]
    assert str(params[0].annotation) == "Subparsers"
    assert inspect.signature(register).return_annotation in (None, "None")


def test_one_user_error_type() -> None:
    import worker.cli

    for name in (*COMMAND_MODULES, "worker.cli.kafka_args", "worker.cli.ops.common"):
        module = importlib.import_module(name)
        own = [
            obj.__name__
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Exception)
            and obj.__module__ == module.__name__
            and obj.__name__ != "InvalidLine"  # a line `produce` skips, not a command's error
        ]
        assert own == [], f"{name} defines its own error type(s) {own}: raise worker.cli.UserError"
    assert worker.cli.UserError.__module__ == "worker.cli"


def test_the_run_path_loads_no_offline_command() -> None:
    # before: the member imported worker.judge, which imported the dataset command's module
    code = (
        "import json, sys\n"
        "import worker.cli.run, worker.app, worker.preflight\n"
        f"print(json.dumps(sorted(m for m in {list(OFFLINE)!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == []


ONE_LINE = [
    (["ab", "report", "--confidence", "0.2"], "llmroute ab: --confidence must be in [0.5, 1)"),
    (["sim-provider", "--alias", "x"], "llmroute sim-provider: bad --alias 'x'"),
    (
        ["score", "--router", "/nonexistent", "--data", "/dev/null", "--out", "x"],
        "llmroute score: ",
    ),
    (["dataset", "build", "--out", "x", "--scale", "bad"], "llmroute dataset: bad --scale"),
    (["retrain", "--data", "/nonexistent", "--registry", "r"], "llmroute retrain: cannot read"),
]


@pytest.mark.parametrize(("argv", "line"), ONE_LINE)
def test_user_errors_are_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(line), err  # after the stage lines of a long command


def test_the_demo_works_in_the_checkout() -> None:
    # the demo's router and data paths are relative to the checkout (.demo/router in local.toml)
    from worker.cli.demo import ROOT, WORK

    assert (ROOT / "pyproject.toml").is_file() and WORK == ROOT / ".demo"


TRAIN_SEMANTIC = ["train", "--data", "/dev/null", "--out", "x", "--router", "semantic"]
TRAIN_SEMANTIC += ["--semantic-config"]
LOCAL_TOML = str(Path(__file__).resolve().parents[2] / "deploy" / "config" / "local.toml")


@pytest.mark.parametrize(
    ("content", "argv", "line"),
    [
        # an artifact path that is a file, or whose meta.json is not text
        (
            b"{}",
            ["score", "--router", "{f}", "--data", "/dev/null", "--out", "x"],
            "llmroute score: ",
        ),
        (
            b"\xff\xfe",
            ["score", "--router", "{d}", "--data", "/dev/null", "--out", "x"],
            "llmroute score: ",
        ),
        # the simulator's dataset: not UTF-8, not JSON, a row without an id
        (b"\xff\xfe\n", ["sim-provider", "--data", "{f}"], "llmroute sim-provider: "),
        (b"{nope\n", ["sim-provider", "--data", "{f}"], "llmroute sim-provider: "),
        (b'{"prompt": "p"}\n', ["sim-provider", "--data", "{f}"], "llmroute sim-provider: "),
        # a semantic router's category config: not JSON, or not of its shape
        (b"{not", [*TRAIN_SEMANTIC, "{f}"], "llmroute train: bad --semantic-config"),
        (b"[1]", [*TRAIN_SEMANTIC, "{f}"], "llmroute train: bad --semantic-config"),
        (b'{"categories": [{"name": 5}]}', [*TRAIN_SEMANTIC, "{f}"], "llmroute train: bad"),
        (b'{"categories": "x"}', [*TRAIN_SEMANTIC, "{f}"], "llmroute train: bad"),
        (b"\xff{", [*TRAIN_SEMANTIC, "{f}"], "llmroute train: bad --semantic-config"),
        # the demo's labelled data, read by the same JSONL reader as every dataset
        (b"\xff\xfe\n", ["demo", "--data", "{f}", "--train-only"], "llmroute demo: bad --data"),
        (b"{nope\n", ["demo", "--data", "{f}", "--train-only"], "llmroute demo: bad --data"),
        # a judge rubric that is not UTF-8
        (
            b"\xff\xfe",
            ["judge", "--config", LOCAL_TOML, "--judge-model", "m", "--rubric", "{f}"],
            "llmroute judge: ",
        ),
    ],
)
def test_bad_files_are_refused_in_one_line(
    content: bytes,
    argv: list[str],
    line: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f = tmp_path / "file"
    f.write_bytes(content)
    d = tmp_path / "art"
    d.mkdir()
    (d / "meta.json").write_bytes(content)
    assert main([a.format(f=f, d=d) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(line), err


@pytest.mark.parametrize(
    "argv",
    [
        # an output path that is a folder, a file where a folder goes, a place nobody can write
        ["score", "--router", "{art}", "--data", "{data}", "--out", "{tmp}"],
        ["train", "--data", "{data}", "--out", "{data}"],
        ["train", "--data", "{data}", "--out", "/proc/llmroute-test"],
    ],
)
def test_output_paths_that_cannot_be_written_are_refused_in_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.routers import synth

    data = synth.write_jsonl(tmp_path / "d.jsonl", synth.records(60, seed=4))
    art = tmp_path / "art"
    assert main(["train", "--data", str(data), "--out", str(art), "--router", "classifier"]) == 0
    capsys.readouterr()
    assert main([a.format(art=art, data=data, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"llmroute {argv[0]}: "), err


CALIBRATE = ["calibrate", "--router", "/nonexistent", "--data", "/dev/null"]
RETRAIN = ["retrain", "--data", "/dev/null", "--registry", "r"]
NO_KAFKA = ["--bootstrap", "127.0.0.1:9"]


# Each refused by its argparse type, before any file or broker is touched; the last argument
# is the offending FLAG=VALUE. Before: tracebacks (`--strong-fraction 1.5`, `--holdout nan`,
# `produce --rate -1`, `sim-provider --port 70000`), a wait forever (`tail
# --idle-timeout-s nan`), or a silent nonsense run (`--budget-usd nan` stored a key,
# `sim-provider --rpm -1` served).
@pytest.mark.parametrize(
    "argv",
    [
        *(
            [*CALIBRATE, f"{flag}={value}"]
            for flag, value in (
                ("--strong-fraction", "nan"),
                ("--strong-fraction", "1.5"),
                ("--quality-ratio", "-0.1"),
                ("--quality-ratio", "inf"),
                ("--budget-usd", "-1"),
                ("--budget-usd", "nan"),
                ("--budget-fraction", "0"),
                ("--budget-fraction", "inf"),
                ("--quality-target", "nan"),
                ("--quality-target", "2"),
            )
        ),
        ["train", "--data", "/dev/null", "--out", "x", "--holdout=nan"],
        ["train", "--data", "/dev/null", "--out", "x", "--holdout=2"],
        [*RETRAIN, "--holdout=-0.5"],
        [*RETRAIN, "--strong-fraction=nan"],
        [*RETRAIN, "--quality-ratio=0"],
        [*RETRAIN, "--min-eval=-1"],
        ["sim-provider", "--default-accuracy=2"],
        ["sim-provider", "--per-token-ms=-1"],
        ["sim-provider", "--port=70000"],
        ["sim-provider", "--rpm=-1"],
        ["run", "--config", "/dev/null", "--metrics-port=-1"],
        ["demo", "--workers=0"],
        ["demo", "--requests=-5"],
        ["judge", "--judge-model", "m", "--concurrency=0"],
        ["produce", "-", *NO_KAFKA, "--max-tokens=0"],
        ["produce", "-", *NO_KAFKA, "--rate=-1"],
        ["produce", "-", *NO_KAFKA, "--rate=nan"],
        ["produce", "-", *NO_KAFKA, "--limit=-1"],
        ["tail", *NO_KAFKA, "--max=-1"],
        ["tail", *NO_KAFKA, "--idle-timeout-s=nan"],
        ["tail", *NO_KAFKA, "--idle-timeout-s=-5"],
        ["dlq", "list", *NO_KAFKA, "--limit=0"],
        ["dlq", "replay", *NO_KAFKA, "--limit=-3"],
        ["dataset", "build", "--out", "o.jsonl", *NO_KAFKA, "--read-timeout-s=nan"],
        ["ab", "report", *NO_KAFKA, "--read-timeout-s=-1"],
    ],
)
def test_numbers_out_of_range_are_refused_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    flag, _, value = argv[-1].partition("=")
    assert "Traceback" not in "\n".join(err)
    assert flag in err[-1] and value in err[-1], err
