"""Tampered and mismatched checkpoints and model directories: a one-line error naming what does
not match, and nothing is ever loaded by executing code.

Each case damages a copy of a finished 2-step run and resumes it with ``harmonia train
--resume`` (in-process CLI), or evaluates it with ``harmonia eval``. "Re-manifested" cases also
recompute the checkpoint's manifest, as a deliberate tamperer would, so the loader's own checks
(config, model, state layout) are what must catch them. A pickle bomb — a pickle whose loading
would write a marker file — is planted as the training state, as the model weights and beside
them; the marker must never appear. A static scan of src/ proves every ``torch.load`` passes
``weights_only=True`` and nothing else unpickles.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import importlib
import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from faults import TINY_RUN, record, torch_threads
from harmonia.cli import main
from harmonia.errors import CheckpointError
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.training.config import load_train_config
from harmonia.training.loop import train

SRC = Path(__file__).resolve().parents[1] / "src" / "harmonia"
RUN = [*TINY_RUN, "train.checkpoint_every=1", "train.keep_last=3", "train.steps=2"]
STEP = "checkpoints/step-00000002"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    with torch_threads(1):
        train(load_train_config("demo", RUN), run, data_dir=tiny_dataset)
    return run


class Bomb:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a pickle bomb writes; the bomb is shown to work before it is planted."""
    path = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Bomb(path)))  # proving the bomb is live
    assert path.read_text() == "pwned"
    path.unlink()
    return path


def remanifest(checkpoint: Path, ledger: str | None = None) -> None:
    """Recompute the manifest (after writing ``ledger`` as ledger.json, when given)."""
    if ledger is not None:
        (checkpoint / "ledger.json").write_text(ledger)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {
        name: hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
        for name in manifest["files"]
    }
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def flip_byte(name: str) -> Callable[[Path, Path], None]:
    def tamper(checkpoint: Path, marker: Path) -> None:
        with (checkpoint / name).open("r+b") as fh:
            fh.seek(len((checkpoint / name).read_bytes()) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x20]))

    return tamper


def edit_state(change: Callable[[dict[str, Any], Path], Any]) -> Callable[[Path, Path], None]:
    def tamper(checkpoint: Path, marker: Path) -> None:
        state = torch.load(checkpoint / "state.pt", weights_only=True)
        torch.save(change(state, marker), checkpoint / "state.pt")
        remanifest(checkpoint)

    return tamper


def other_model(checkpoint: Path, marker: Path) -> None:
    config = ModelConfig.named("tiny", backbone={"depth": 1})
    VATT(config, WordTokenizer.build(["one two three"])).save_pretrained(checkpoint)
    remanifest(checkpoint)


def other_vocabulary(checkpoint: Path, marker: Path) -> None:
    vocab = json.loads((checkpoint / "vocab.json").read_text())
    words = [*vocab["vocab"][:2], *vocab["vocab"][:1:-1]]  # specials first, the rest reversed
    (checkpoint / "vocab.json").write_text(json.dumps({**vocab, "vocab": words}))
    remanifest(checkpoint)


def raw_pickle_bomb(checkpoint: Path, marker: Path) -> None:
    (checkpoint / "state.pt").write_bytes(
        pickle.dumps({"format": 1, "x": Bomb(marker)}, protocol=2)
    )
    remanifest(checkpoint)


def optimizer_of_another_model(state: dict[str, Any], marker: Path) -> dict[str, Any]:
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW(params)
    params[0].grad = torch.ones(3)
    optimizer.step()
    return {**state, "optimizer": optimizer.state_dict()}


def config_of_another_run(state: dict[str, Any], marker: Path) -> dict[str, Any]:
    config = json.loads(json.dumps(state["config"]))
    config["optim"]["lr"] = 0.5
    return {**state, "config": config}


CASES: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "weights byte flipped": (flip_byte("model.safetensors"), "modified after writing: model.safetensors"),
    "state byte flipped": (flip_byte("state.pt"), "modified after writing: state.pt"),
    "ledger byte flipped": (flip_byte("ledger.json"), "modified after writing: ledger.json"),
    "config byte flipped": (flip_byte("config.json"), "modified after writing: config.json"),
    "vocab byte flipped": (flip_byte("vocab.json"), "modified after writing: vocab.json"),
    "state truncated": (
        lambda c, m: (c / "state.pt").write_bytes((c / "state.pt").read_bytes()[:1000]),
        "modified after writing: state.pt",
    ),
    "weights deleted": (lambda c, m: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    "manifest deleted": (lambda c, m: (c / "manifest.json").unlink(), "manifest.json is missing"),
    "manifest garbage": (
        lambda c, m: (c / "manifest.json").write_text("{"), "unreadable manifest.json"
    ),
    "directory renamed": (
        lambda c, m: c.rename(c.with_name("step-00000005")), "holds step 2, not its name's"
    ),
    "re-manifested: model of another size": (
        other_model,
        "its model (config.json) differs from the run's config at model.backbone.depth",
    ),
    "re-manifested: another vocabulary": (other_vocabulary, "vocab.json does not match"),
    "re-manifested: config of another run": (
        edit_state(config_of_another_run),
        "the config differs from the run's at optim.lr",
    ),
    "re-manifested: no optimizer state": (
        edit_state(lambda s, m: {k: v for k, v in s.items() if k != "optimizer"}),
        "training state does not fit this run (no 'optimizer' in it)",
    ),
    "re-manifested: optimizer of another model": (
        edit_state(optimizer_of_another_model),
        "training state does not fit this run (ValueError: loaded state dict",
    ),
    "re-manifested: data position of another layout": (
        edit_state(lambda s, m: {**s, "data": {"epoch": 0}}),
        "training state does not fit this run (no 'consumed' in it)",
    ),
    "re-manifested: ledger not JSON": (
        lambda c, m: remanifest(c, ledger="{not json"),
        "ledger.json: Expecting property name",
    ),
    "re-manifested: pickle bomb in torch.save format": (
        edit_state(lambda s, m: {**s, "extra": Bomb(m)}),
        "cannot read",
    ),
    "re-manifested: raw pickle bomb": (raw_pickle_bomb, "cannot read"),
}  # fmt: skip


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_checkpoint_is_a_clear_error(
    case: str, finished: Path, tiny_dataset: Path, tmp_path: Path, marker: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for older in ("step-00000001",):  # resume would fall back to nothing else
        shutil.rmtree(run / "checkpoints" / older)
    tamper, expected = CASES[case]
    tamper(run / STEP, marker)
    # one step more: a finished run resumed with its own length is left alone, unread
    argv = ["train", "demo", "--out", str(run), "--data", str(tiny_dataset), "--resume", *RUN]
    code, err = run_cli([*argv, "train.steps=3"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("harmonia: error: ") and expected in lines[0], lines[0]
    assert str(run) in lines[0]  # names the run or its checkpoint
    assert not marker.exists()


def test_model_directories_never_unpickle(
    finished: Path, tiny_dataset: Path, tmp_path: Path, marker: Path
) -> None:
    """A bomb beside the weights is never opened; a bomb as the weights is refused, also by
    ``harmonia eval``."""
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    torch.save({"x": Bomb(marker)}, model / "pytorch_model.bin")
    (model / "optimizer.pkl").write_bytes(pickle.dumps(Bomb(marker)))
    VATT.from_pretrained(model)
    (model / "model.safetensors").write_bytes(pickle.dumps(Bomb(marker)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors"):
        VATT.from_pretrained(model)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    torch.save({"x": Bomb(marker)}, run / "model" / "model.safetensors")
    code, err = run_cli(["eval", str(run), "--data", str(tiny_dataset), "--max-eval", "8"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.safetensors" in err and "Traceback" not in err
    assert not marker.exists()
    record("tampered_checkpoints", cases=len(CASES) + 3, bombs_executed=0)


# ------------------------------------------------------------------------- static proof
UNPICKLERS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "marshal.load",
    "marshal.loads", "shelve.open", "torch.jit.load", "yaml.unsafe_load", "yaml.full_load",
    "yaml.unsafe_load_all", "yaml.full_load_all", "eval", "exec", "builtins.eval", "builtins.exec",
}  # fmt: skip


def unsafe_loads(source: str, module: str | None = None) -> tuple[list[str], dict[str, int]]:
    """Calls in ``source`` that could run code while loading data; and counts of the loads that
    were checked and found safe (``torch.load``, ``yaml.load``, ``numpy.load``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            inner = dotted(expr.value)
            return f"{inner}.{expr.attr}" if inner else None
        return None

    bad: list[str] = []
    safe = {"torch.load": 0, "yaml.load": 0, "numpy.load": 0}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func) or ""
        name = name.replace("np.", "numpy.", 1) if name.startswith("np.") else name
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"line {node.lineno}: {name}"
        if name in UNPICKLERS:
            bad.append(where)
        elif name in ("torch.load", "torch.serialization.load"):
            flag = keywords.get("weights_only")
            if isinstance(flag, ast.Constant) and flag.value is True:
                safe["torch.load"] += 1
            else:
                bad.append(f"{where} without weights_only=True")
        elif name == "numpy.load":
            flag = keywords.get("allow_pickle")
            if flag is None or (isinstance(flag, ast.Constant) and flag.value is False):
                safe["numpy.load"] += 1
            else:
                bad.append(f"{where} with allow_pickle")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader")
            resolved = _resolve(module, dotted(loader)) if loader is not None else None
            if isinstance(resolved, type) and issubclass(resolved, yaml.SafeLoader):
                safe["yaml.load"] += 1
            else:
                bad.append(f"{where} with a loader that is not a SafeLoader")
    return bad, safe


def _resolve(module: str | None, name: str | None) -> Any:
    if module is None or name is None:
        return None
    if name.startswith("yaml."):
        return getattr(yaml, name.split(".", 1)[1], None)
    return getattr(importlib.import_module(module), name, None)


def test_the_scan_finds_unsafe_loads() -> None:
    source = (
        "import torch, pickle\nimport numpy as np\nfrom torch import load as tl\nimport yaml\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\ntl('a')\npickle.loads(b'')\n"
        "np.load('a', allow_pickle=True)\nyaml.load('a', Loader=yaml.Loader)\neval('1')\n"
        "torch.load('a', weights_only=True)\nyaml.load('a', Loader=yaml.SafeLoader)\n"
    )
    bad, safe = unsafe_loads(source, "yaml")
    assert [b.split(":")[0] for b in bad] == [f"line {n}" for n in range(5, 12)]
    assert safe == {"torch.load": 1, "yaml.load": 1, "numpy.load": 0}


def test_src_only_loads_without_executing_code() -> None:
    found: list[str] = []
    total = {"torch.load": 0, "yaml.load": 0, "numpy.load": 0}
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        bad, safe = unsafe_loads(path.read_text(encoding="utf-8"), module)
        found += [f"{path.relative_to(SRC.parent)}: {b}" for b in bad]
        total = {k: total[k] + safe[k] for k in total}
    assert found == []
    assert total["torch.load"] >= 1 and total["yaml.load"] >= 1  # the scan saw the real loads
    record("torch_load_scan", **total, unsafe=len(found))
