"""The training config: shipped configs, model sizes, and `harmonia config show` errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harmonia.errors import ConfigError
from harmonia.models.config import ModelConfig
from harmonia.training.config import (
    TrainConfig,
    load_train_config,
    shipped_configs,
    train_config_from_dict,
)
from harmonia.typed_config import parse_yaml, to_yaml


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    cfg = load_train_config(name)
    assert isinstance(cfg, TrainConfig)
    assert train_config_from_dict(parse_yaml(to_yaml(cfg))) == cfg


def test_expected_configs_are_shipped() -> None:
    names = set(shipped_configs())
    assert {"demo", "demo-harmonized", "vatt-base"} <= names
    assert any(n.startswith("avmnist-") for n in names)


def test_base_config_and_overrides_combine() -> None:
    cfg = load_train_config("demo-harmonized", ["train.steps=7", "optim.betas=[0.8, 0.9]"])
    demo = load_train_config("demo")
    assert cfg.harmonize.method != demo.harmonize.method
    assert cfg.data == demo.data
    assert cfg.train.steps == 7 and cfg.optim.betas == (0.8, 0.9)


def test_model_size_expands_and_merges_overrides() -> None:
    cfg = load_train_config("demo", ["model.size=small", "model.backbone.depth=1"])
    small = ModelConfig.named("small")
    assert cfg.model.backbone.width == small.backbone.width
    assert cfg.model.backbone.depth == 1
    assert cfg.model.spaces == small.spaces


def test_config_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\ntrain:\n  steps: 3\n")
    assert load_train_config(path).train.steps == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["harmonize.methdo=pcgrad"],
            "unknown key 'harmonize.methdo' (did you mean 'harmonize.method'?)",
        ),
        (["optim.lr=-1"], "optim.lr: expected a finite positive float, got -1"),
        (["train.steps=ten"], "train.steps: expected an integer, got 'ten'"),
        (
            ["harmonize.space=params"],
            "harmonize.space: expected one of 'embedding', 'parameters', 'batch', got 'params'",
        ),
        (["optim.warmup_fraction=2"], "optim.warmup_fraction: expected a float in [0, 1], got 2"),
        (["model.backbone.heads=5"], "model.backbone.heads: 5 heads must divide width 64"),
        (["model.size=huge"], "model.size: unknown size 'huge'"),
        (
            ["harmonize.sampler.enabled=true", "harmonize.ledger.enabled=false"],
            "harmonize.sampler.enabled: the sampler needs the ledger",
        ),
        (
            ["harmonize.curriculum.name=threshold", "harmonize.curriculum.start=3"],
            "harmonize.curriculum: curriculum 'threshold': start",
        ),
        (["train.device=tpu"], "train.device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["harmonize.method=pcgrd"], "harmonize.method: expected one of 'none', 'pcgrad'"),
        (
            ["harmonize.method=gradvac", "harmonize.options.bta=0.1"],
            "harmonize.options: method 'gradvac' got unknown option(s) bta",
        ),
        (
            ["harmonize.space=batch", "harmonize.curriculum.name=threshold"],
            "harmonize.curriculum: needs per-sample conflict scores",
        ),
        (["harmonize.ledger.decay=1"], "harmonize.ledger.decay: expected a float in [0, 1), got 1"),
        (["data.build.noise=2"], "data.build: --noise must be in [0, 1], got 2"),
        (["losses.specs=[]"], "losses.specs: expected at least one loss"),
    ],
)
def test_validation_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_train_config("demo", overrides)
    assert str(exc.value).startswith(message)


def harmonia(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "harmonia", *args], capture_output=True, text=True, env=env
    )


def test_cli_show_prints_a_config_that_reloads_equal(tmp_path: Path) -> None:
    out = harmonia("config", "show", "demo", "train.steps=11")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "resolved.yaml"
    path.write_text(out.stdout)
    assert load_train_config(path) == load_train_config("demo", ["train.steps=11"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["demo", "harmonize.methdo=pcgrad"],
            "unknown key 'harmonize.methdo' (did you mean 'harmonize.method'?)",
        ),
        (["demo", "optim.lr=-1"], "optim.lr: expected a finite positive float, got -1"),
        (
            ["dmeo"],
            "no config file 'dmeo' and no shipped config of that name (did you mean 'demo'?)",
        ),
        (["demo", "optim.lr"], "override 'optim.lr' must look like section.key=value"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    out = harmonia("config", "show", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith(f"harmonia: error: {message}")


def test_method_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"got 'pcgrd' \(did you mean 'pcgrad'\?\)$"):
        load_train_config("demo", ["harmonize.method=pcgrd"])
