"""Hostile outputs and run files: output paths that are not regular files, read-only and full
disks, run-directory files cut short, nested too deeply or made of YAML aliases, symlinked
checkpoints, ids, metric names and source file names made to fool a spreadsheet, a browser or
matplotlib.

Every case ends in a result or a one-line error (no traceback), leaves no temporary file behind
and leaves special files (FIFOs, devices, symbolic links) as they were.
"""

from __future__ import annotations

import csv
import errno
import html
import json
import os
import pathlib
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import torch
import yaml

from harmonia.audit import build_audit, plots
from harmonia.cli import main
from harmonia.errors import CheckpointError, HarmoniaError, OutputError
from harmonia.evaluation.run_dir import RunDir
from harmonia.files import atomic_path, write_atomic
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.models.pretrained import read_pretrained
from harmonia.models.vocab import WordTokenizer
from harmonia.training import checkpoint as ckpt
from harmonia.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from harmonia.training.logging import MetricLogger, read_metrics
from untrained_run import untrained_run

DEEP_JSON = "[" * 100_000 + "]" * 100_000
SMALL_BUILD = ["--train", "8", "--val", "4", "--test", "4", "--workers", "1", "--quiet"]


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every text written to a temporary file fails half-way with ``code`` (a full or
    read-only disk), after part of it reached the file."""
    real = pathlib.Path.write_text

    def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.endswith(".tmp"):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(code, os.strerror(code), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a symlink (to a file that must keep its content) and a directory."""
    (tmp_path / "target.txt").write_text("keep me\n")
    paths = {"fifo": tmp_path / "out.fifo", "symlink": tmp_path / "out.link", "dir": tmp_path / "d"}
    os.mkfifo(paths["fifo"])
    paths["symlink"].symlink_to(tmp_path / "target.txt")
    paths["dir"].mkdir()
    return paths


def assert_unchanged(kind: str, path: Path, tmp_path: Path) -> None:
    mode = os.lstat(path).st_mode
    if kind == "fifo":
        assert stat.S_ISFIFO(mode)
    elif kind == "symlink":
        assert stat.S_ISLNK(mode) and os.readlink(path) == str(tmp_path / "target.txt")
        assert (tmp_path / "target.txt").read_text() == "keep me\n"
    else:
        assert stat.S_ISDIR(mode) and not any(path.iterdir())


# --------------------------------------------------------------------- D10: the one writer
@pytest.mark.parametrize("kind", ["fifo", "symlink", "dir"])
def test_write_atomic_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = special_files(tmp_path)[kind]
    with pytest.raises(OutputError) as caught:
        write_atomic(path, "{}\n")
    assert isinstance(caught.value, HarmoniaError) and isinstance(caught.value, OSError)
    message = str(caught.value)
    assert message.startswith(f"cannot write {path}: it is ") and "\n" not in message
    assert "refusing to replace it" in message
    assert_unchanged(kind, path, tmp_path)
    assert leftovers(tmp_path) == []
    with pytest.raises(OutputError):  # the ledger writes through the same writer
        ConflictLedger().to_csv(path)
    assert_unchanged(kind, path, tmp_path)


def test_write_atomic_refuses_a_device(tmp_path: Path) -> None:
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(OutputError, match="it is a character device"):
        write_atomic(device, b"x")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_temporary_names_are_unique_and_removed_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_atomic(target, "old\n")
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first\n")
        second.write_text("second\n")
    assert target.read_text() == "first\n" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "first\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_names_the_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    target = tmp_path / "out.json"
    write_atomic(target, "old\n")
    fail_writes(monkeypatch, code)
    with pytest.raises(OutputError) as caught:
        write_atomic(target, "new content\n")
    assert str(caught.value) == f"cannot write {target}: {os.strerror(code)}"
    assert caught.value.errno == code and caught.value.filename == str(target)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"out\.json: Read-only file system$"):
        write_atomic(tmp_path / "out.json", "x")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def eval_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/ with an untrained tiny VATT, a config naming the dataset and a ledger."""
    run = untrained_run(tiny_dataset, tmp_path_factory.mktemp("evalrun"))
    ledger = ConflictLedger()
    ledger.update(["train-000000", "train-000001"], torch.tensor([0.5, -0.5]), step=1)
    ledger.to_csv(run / "ledger.csv")
    return run


EVAL_FAST = ["--max-eval", "8", "--max-train", "16", "--batch-size", "16"]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_eval_json_refuses_a_special_file(
    eval_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = special_files(tmp_path)[kind]
    assert main(["eval", str(eval_run), "--json", str(path), *EVAL_FAST]) == 2
    line = one_line(capsys)
    assert line.startswith(f"harmonia: error: cannot write {path}: it is ")
    assert_unchanged(kind, path, tmp_path)
    assert leftovers(tmp_path) == []


def test_eval_on_a_read_only_run_prints_results_then_one_line(
    eval_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fail_writes(monkeypatch, errno.EROFS)
    assert main(["eval", str(eval_run), *EVAL_FAST]) == 2
    captured = capsys.readouterr()
    assert "zero-shot" in captured.out.lower()  # the table came before the failure
    assert "Traceback" not in captured.err
    last = re.split(r"[\r\n]", captured.err.strip())[-1]  # after the progress bars
    assert last == (
        f"harmonia: error: cannot write {eval_run / 'eval.json'}: Read-only file system; "
        "the results above were not saved (--json PATH)"
    )
    assert not (eval_run / "eval.json").exists() and leftovers(eval_run) == []


# --------------------------------------------------------------------- audit
def small_run(folder: Path, ids: list[str], metrics: list[dict[str, float]] | None = None) -> Path:
    """A run directory without dataset or model: config, metrics.jsonl and a ledger."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"harmonize": {"method": "pcgrad"}}))
    with MetricLogger(folder, tensorboard=False) as log:
        for step, scalars in enumerate(metrics or [{"loss/va": 2.0}, {"loss/va": 1.0}]):
            log.log(step, scalars)
    ledger = ConflictLedger()
    ledger.update(ids, torch.linspace(-0.5, 0.5, len(ids)), step=1)
    ledger.to_csv(folder / "ledger.csv")
    return folder


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dir"])
def test_audit_out_refuses_a_special_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = small_run(tmp_path / "run", ["a", "b"])
    path = special_files(tmp_path)[kind]
    assert main(["audit", str(run), "--out", str(path)]) == 2
    assert one_line(capsys).startswith(f"harmonia: error: cannot write {path}: it is ")
    assert_unchanged(kind, path, tmp_path)
    assert leftovers(tmp_path) == [] and not (tmp_path / f"{path.stem}_scores.csv").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_audit_on_a_full_or_read_only_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int
) -> None:
    run = small_run(tmp_path / "run", ["a", "b"])
    fail_writes(monkeypatch, code)
    assert main(["audit", str(run)]) == 2
    line = one_line(capsys)
    assert line == f"harmonia: error: cannot write {run / 'audit_scores.csv'}: {os.strerror(code)}"
    assert leftovers(run) == [] and not (run / "audit.html").exists()


# --------------------------------------------------------------------- data build (D11)
@pytest.mark.parametrize("where", ["below a file", "read-only", "full disk"])
def test_data_build_on_an_unwritable_disk_is_one_line(
    tmp_path: Path,
    real_source_dir: Path | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    from harmonia.data import builder

    if real_source_dir is None:
        pytest.skip("the built-in source prints a warning banner")
    (tmp_path / "file").write_text("")
    out = tmp_path / ("file" if where == "below a file" else "disk") / "ds"
    if where == "read-only":
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
            if self.name.startswith(".ds.tmp-") or self.parent.name.startswith(".ds.tmp-"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    elif where == "full disk":

        def write_shard(path: Path, samples: Any) -> Any:
            Path(path).write_bytes(b"half a shard")
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))

        monkeypatch.setattr(builder, "write_shard", write_shard)
    source = ["--source", str(real_source_dir)]
    assert main(["data", "build", "--out", str(out), *source, *SMALL_BUILD]) == 2
    line = one_line(capsys)
    assert line.startswith(f"harmonia: error: cannot write the dataset {out} (")
    assert line.endswith("; nothing was written")
    assert not out.exists()
    if out.parent.is_dir():
        assert [p.name for p in out.parent.iterdir()] == []


# --------------------------------------------------------------------- ledger cut short (D11)
def test_a_ledger_cut_short_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = small_run(tmp_path / "run", ["a", "b", "c"])
    text = (run / "ledger.csv").read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut = text[: len(text) - len(last) - 1 + last.index(",", last.index(",") + 1)]
    (run / "ledger.csv").write_text(cut)  # the last row: id and score only
    with pytest.raises(CheckpointError, match=r"line 4 has fewer than 6 fields"):
        ConflictLedger.from_csv(run / "ledger.csv")
    assert main(["audit", str(run)]) == 2
    assert one_line(capsys).startswith(f"harmonia: error: {run / 'ledger.csv'}: line 4 has fewer")


# --------------------------------------------------------------------- nested too deeply (D11)
def test_deep_metrics_line_is_skipped_like_a_torn_one(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run", ["a", "b"])
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 9, "loss/va": ' + DEEP_JSON + "}\n")
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1]
    assert main(["audit", str(run)]) == 0


def test_deep_run_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = small_run(tmp_path / "run", ["a", "b"])
    (run / "config.yaml").write_text("harmonize: " + DEEP_JSON + "\n")
    assert main(["audit", str(run)]) == 2
    line = one_line(capsys)
    assert line == f"harmonia: error: {run / 'config.yaml'}: invalid YAML: nested too deeply"


def test_deep_model_files_are_one_line(eval_run: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        (model / name).write_bytes((eval_run / "model" / name).read_bytes())
    (model / "vocab.json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match=r"vocab\.json: not valid JSON \(JSON nested too"):
        read_pretrained(model)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        WordTokenizer.load(model / "vocab.json")
    (model / "config.json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON \(JSON nested too"):
        read_pretrained(model)


def test_deep_checkpoint_ledger_and_manifest_are_one_line(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path, 1, model=model, state={}, ledger={"ids": []})
    (path / "ledger.json").write_text(DEEP_JSON)
    (path / "manifest.json").unlink()
    ckpt._write_manifest(path, 1)  # tampered with consistently
    with pytest.raises(CheckpointError, match=r"ledger\.json: JSON nested too deeply"):
        load_checkpoint(path)
    (path / "manifest.json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match=r"unreadable manifest\.json"):
        load_checkpoint(path)


# --------------------------------------------------------------------- D12: alias bombs
def alias_bomb(levels: int) -> str:
    """A YAML document of 10**levels strings made of ``levels`` aliases."""
    lines = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"harmonize: {{method: *x{levels - 1}}}"]) + "\n"


def test_run_config_refuses_yaml_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = small_run(tmp_path / "run", ["a", "b"])
    (run / "config.yaml").write_text(alias_bomb(9))  # the 556-byte bomb: 10**9 strings
    assert len((run / "config.yaml").read_bytes()) == 556
    with pytest.raises(HarmoniaError, match=r"aliases \(\*name\) are not allowed"):
        RunDir(run).config()
    (run / "config.yaml").write_text(alias_bomb(5))  # small enough to expand here
    assert main(["audit", str(run)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"harmonia: error: {run / 'config.yaml'}: invalid YAML (line 2, ")
    assert line.endswith("aliases (*name) are not allowed")


# --------------------------------------------------------------------- D13: symlinked checkpoints
def test_a_symlinked_checkpoint_is_unlinked_by_pruning(tmp_path: Path) -> None:
    run, archive = tmp_path / "run", tmp_path / "archive"
    model = torch.nn.Linear(2, 2)
    for step in (1, 2):
        save_checkpoint(run, step, model=model, state={}, keep_last=2)
    archive.mkdir()
    kept = archive / "step-00000001"
    (run / "checkpoints" / "step-00000001").rename(kept)
    (run / "checkpoints" / "step-00000001").symlink_to(kept, target_is_directory=True)
    for step in (3, 4):
        save_checkpoint(run, step, model=model, state={}, keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000004",
    ]
    assert load_checkpoint(kept).step == 1  # the link's target is untouched


# --------------------------------------------------------------------- D15: hostile ids
def test_score_csv_cells_cannot_be_formulas(tmp_path: Path) -> None:
    ids = ['=HYPERLINK("http://localhost/x","click")', "+1", "-2", "@SUM(A1)", "\tx", "ok"]
    run = small_run(tmp_path / "run", ids)
    out = build_audit(run)
    with out.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["id"] for row in rows} == {"'" + i for i in ids[:-1]} | {"ok"}
    assert min(float(row["score"]) for row in rows) == -0.5  # numbers are left as they are


def test_ids_with_bidi_controls_are_shown_spelt_out(tmp_path: Path) -> None:
    spoof = "train-\u202eevil\u200b-\U0001f600"
    run = small_run(tmp_path / "run", [spoof, "clean"])
    text = build_audit(run).html.read_text(encoding="utf-8")
    assert "\u202e" not in text and "\u200b" not in text
    assert "<bdi><b>train-\\u202eevil\\u200b-\U0001f600</b></bdi>" in text
    assert "<bdi><b>clean</b></bdi>" in text


# --------------------------------------------------------------------- D17: $ in metric names
def test_metric_names_with_dollars_are_plotted_literally(tmp_path: Path) -> None:
    metrics = [
        {"loss/$\\frac{x": 2.0 - s, "conflict/$a~b$/fraction": 0.5, "curriculum/$^$": 0.3}
        for s in range(3)
    ]
    run = small_run(tmp_path / "run", ["a", "b"], metrics)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 3, "hist/$\\frac{a~b": [1] * 40}) + "\n")
    out = build_audit(run)
    assert out.html.read_text(encoding="utf-8").count('src="data:image/png;base64,') >= 4
    assert plots.plain_label("loss $\\frac{x$") == "loss \\$\\frac{x\\$"


# --------------------------------------------------------------------- D18: source file names
HOSTILE_NAME = "a \"q\" 'c' <script>alert(1)<img src=x onerror=alert(2)> #t=0?x=1&y=2 \u00e9.mp4"
LINKED = (HOSTILE_NAME, "javascript:alert(1)", "sub dir/\u2713 caf\u00e9.mp4")
"""Names inside the source folder, each linked."""


def imported_run(tmp_path: Path, files: Sequence[object], summary: dict[str, Any]) -> Path:
    """A run ranking one clip per entry of ``files`` (its index ``file``, spanning 1.5-3.5 s,
    the first the most suspect) and a dataset, without media, whose summary is ``summary``."""
    ids = [f"clip{n}" for n in range(len(files))]
    run = small_run(tmp_path / "run", ids)
    dataset = tmp_path / "data"
    dataset.mkdir()
    member = {"mp4": {"offset": 0, "size": 1, "sha256": "0"}}
    records = [
        {"id": i, "split": "train", "shard": "s.tar", "members": member, "file": f}
        | {"start": 1.5, "end": 3.5}
        for i, f in zip(ids, files, strict=True)
    ]
    (dataset / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (dataset / "summary.json").write_text(json.dumps(summary))
    return run


def file_links(text: str) -> list[str]:
    """The (unescaped) href of every link on the page that is not to the page itself."""
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]*)"', text)]
    return [h for h in hrefs if not h.startswith(("#", "data:"))]


def test_source_file_names_are_links_inside_the_folder_and_never_markup(tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    (folder / "sub dir").mkdir(parents=True)
    for name in LINKED:
        (folder / name).write_bytes(b"not really a video")
    (tmp_path / "outside.mp4").write_bytes(b"secret")
    (folder / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")
    unlinked = [
        "../outside.mp4",
        str(tmp_path / "outside.mp4"),
        "escape.mp4",  # a symlink out of the folder
        "loop.mp4",  # a symlink to itself
        "javascript:alert(2)",  # no such file
        "bad\0name.mp4",
        7,
    ]
    run = imported_run(tmp_path, [*LINKED, *unlinked], {"import": {"folder": str(folder)}})
    text = build_audit(run, data_dir=tmp_path / "data", media=lambda ids: {}).html.read_text(
        encoding="utf-8"
    )
    assert "<script" not in text and "\0" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;img src=x onerror=alert(2)&gt;" in text  # shown as text
    links = file_links(text)
    assert len(links) == len(LINKED)
    for link, name in zip(links, LINKED, strict=True):  # the most suspect first
        url = urlsplit(link)
        assert url.scheme == "file" and url.netloc == "" and url.query == ""
        assert url.fragment == "t=1.5,3.5"
        assert Path(unquote(url.path)) == (folder / name).resolve()
        assert not set(url.path) & set("\"'<>#? :"), url.path
    assert 'href="javascript' not in text
    assert "file <bdi>../outside.mp4</bdi>" in text and "file <bdi>7</bdi>" in text
    assert "file <bdi>bad\\u0000name.mp4</bdi>" in text


@pytest.mark.parametrize(
    "summary",
    [
        {},  # built by harmonia data build
        {"import": {"inputs": {"folder": "videos"}}},  # imported before the folder was recorded
        {"import": {"folder": "videos"}},  # not absolute
        {"import": {"folder": ["/"]}},
        {"import": {"folder": "/\0videos"}},
    ],
)
def test_without_a_recorded_source_folder_the_file_is_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summary: dict[str, Any]
) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    run = imported_run(tmp_path, ["a.mp4"], summary)
    text = build_audit(run, data_dir=tmp_path / "data", media=lambda ids: {}).html.read_text(
        encoding="utf-8"
    )
    assert file_links(text) == []
    assert "file <bdi>a.mp4</bdi>; 1.5&ndash;3.5 s" in text
