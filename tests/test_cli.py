"""The `pdiff` command line: one module per stage, keyword-only stage functions, and the usage
errors argparse reports for options one mode needs or refuses (no stage runs here)."""

from __future__ import annotations

import importlib
import inspect
import json

import pytest

from pdiff.cli import STAGES, build_parser, main

BACKBONE = json.dumps({"model": "pdiff-tiny", "pretrained": "random"})
SETS = json.dumps([{"dataset": {"name": "shapes"}, "split": "base"}])
EVAL = ["evaluate", "--backbone", BACKBONE, "--data-root", "d", "--sets", SETS, "--params", "{}",
        "--out", "o.json"]

# Each stage module's implementation: the function its `run` calls, keyword-only arguments.
IMPLEMENTATIONS = [
    ("pdiff.pretrain", "pretrain"),
    ("pdiff.check_data", "check_data"),
    ("pdiff.features", "features_stage"),
    ("pdiff.host_prompt", "train_host_prompt"),
    ("pdiff.overfit", "overfit"),
    ("pdiff.fit_dit", "fit_dit"),
    ("pdiff.evaluate", "evaluate"),
    ("pdiff.cost.plan", "plan_cost_command"),
    ("pdiff.report", "make_report"),
]


def test_every_stage_module_has_the_interface_and_a_name_of_its_own():
    names = [s.NAME for s in STAGES]
    assert len(set(names)) == len(names)
    for stage in STAGES:
        assert callable(stage.add_arguments) and callable(stage.run) and stage.HELP, stage
        # named after its subcommand; `train` says which training it is
        module = stage.__name__.rsplit(".", 1)[1]
        assert module == {"train": "train_prompt"}.get(stage.NAME, stage.NAME.replace("-", "_"))


def test_subcommands_are_those_the_workflow_calls():
    """Every rule's subcommand, plus the two a user runs by hand (plan-cost, docs)."""
    assert {s.NAME for s in STAGES} == {
        "prepare", "pretrain", "fetch-weights", "check-data", "fewshot", "features", "train",
        "overfit", "fit-diffusion", "evaluate", "plan-cost", "report", "docs"}


@pytest.mark.parametrize(("module", "function"), IMPLEMENTATIONS)
def test_stage_functions_take_keyword_arguments_only(module, function):
    params = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values()), params


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.NAME)
def test_every_stage_takes_the_shared_run_options(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([stage.NAME, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--threads" in out and "--log-level" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*EVAL, "--mode", "diffusion", "--prompt", "p"], "needs --dit and --store"),
        ([*EVAL, "--mode", "diffusion", "--prompt", "p", "--dit", "d"], "needs --store"),
        ([*EVAL, "--mode", "diffusion", "--dit", "d", "--store", "s"], "needs --prompt"),
        ([*EVAL, "--mode", "baseline"], "--mode baseline needs --prompt"),
        ([*EVAL, "--mode", "baseline", "--prompt", "p", "--dit", "d"], "takes no --dit"),
        ([*EVAL, "--mode", "zeroshot", "--prompt", "p"], "takes no --prompt"),
        ([*EVAL, "--mode", "zeroshot", "--variant", "{}"], "takes no --variant"),
        (["features", "--backbone", BACKBONE, "--data-root", "d", "--dataset", "{}",
          "--augment", '{"views": 2}', "--out", "o"], "--augment needs --fewshot"),
        (["features", "--backbone", BACKBONE, "--data-root", "d", "--dataset", "{}",
          "--fewshot", "f.json", "--max-images", "5", "--out", "o"], "--max-images caps"),
        (["plan-cost", "--configfile", "c.yaml", "--measure-only", "--throughputs", "t.json"],
         "--measure-only measures"),
        (["evaluate", "--mode", "zeroshot"], "required"),
        (["fit-diffusion", "--prompt", "p", "--backbone", BACKBONE, "--params", "{}",
          "--seed", "1", "--out", "o"], "--store"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_missing_or_foreign_option_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"pdiff {argv[0]}: error:" in err and message in err, err


def test_a_stage_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["prepare", "--params", '{"kind": "nope"}', "--data-root", str(tmp_path),
                 "--manifest", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err == "pdiff prepare: error: unknown world.kind 'nope'; use synthetic or rehearsal\n"
