"""`harmonia data fetch` against a local HTTP server: verified downloads, mismatches, offline."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harmonia.cli import main
from harmonia.data.fetch import (
    FSDD_URL,
    MNIST_FILES,
    RemoteFile,
    fetch_files,
    fetch_sources,
    fsdd_manifest,
    source_files,
)
from harmonia.data.sources import ENV_CACHE, ENV_DATA, resolve_source
from harmonia.errors import DataError


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        type(self).requests.append(self.path)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], tuple[str, list[str]]]]:
    """serve(folder) -> (base URL, list of requested paths); servers stop after the test."""
    servers = []

    def start(folder: Path) -> tuple[str, list[str]]:
        handler = type("Handler", (_Quiet,), {"requests": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", handler.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _tree(root: Path) -> list[RemoteFile]:
    files = {"a/one.bin": b"first file" * 100, "b/two.bin": b"\x00\x01" * 5000, "three.txt": b"3"}
    items = []
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        items.append(RemoteFile(name, f"got/{name}", hashlib.sha256(data).hexdigest()))
    return items


def test_downloads_verify_and_skip_what_is_present(tmp_path: Path, serve) -> None:
    items = _tree(tmp_path / "remote")
    base, requests = serve(tmp_path / "remote")
    files = [RemoteFile(base + f.url, f.path, f.sha256) for f in items]
    dest = tmp_path / "dest"
    assert fetch_files(files, dest, jobs=2, progress=False) == 3
    for f in items:
        assert (dest / f.path).read_bytes() == (tmp_path / "remote" / f.url).read_bytes()
    assert len(requests) == 3
    assert fetch_files(files, dest, jobs=2, progress=False) == 0  # all present and verified
    assert len(requests) == 3
    (dest / items[0].path).write_bytes(b"tampered")
    assert fetch_files(files, dest, jobs=2, progress=False) == 1
    assert (dest / items[0].path).read_bytes() == b"first file" * 100
    assert not list(dest.rglob("*.partial*"))


def test_checksum_mismatch_is_one_line_and_keeps_nothing(tmp_path: Path, serve) -> None:
    items = _tree(tmp_path / "remote")
    base, _ = serve(tmp_path / "remote")
    files = [RemoteFile(base + f.url, f.path, f.sha256) for f in items]
    (tmp_path / "remote" / items[1].url).write_bytes(b"a different file")
    with pytest.raises(DataError) as err:
        fetch_files(files, tmp_path / "dest", jobs=2, progress=False)
    assert "SHA-256 mismatch" in str(err.value) and items[1].url in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dest" / items[1].path).exists()
    assert not list((tmp_path / "dest").rglob("*.partial*"))


def test_missing_remote_file_names_the_url(tmp_path: Path, serve) -> None:
    base, _ = serve(tmp_path)
    with pytest.raises(DataError, match="HTTP 404"):
        fetch_files(
            [RemoteFile(base + "nope.bin", "nope.bin", "0" * 64)], tmp_path / "d", progress=False
        )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_cli_fetch_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    code = main(["data", "fetch", "--dest", str(tmp_path / "d"), "--mnist-url", url, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cannot download" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "FETCHED.json").exists()


def test_cli_fetch_rejects_files_that_do_not_match_the_pins(
    tmp_path: Path, serve, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake MNIST mirror (env-var base URL): the pinned SHA-256 catches it."""
    for name in MNIST_FILES:
        (tmp_path / "mirror").mkdir(exist_ok=True)
        (tmp_path / "mirror" / name).write_bytes(b"not mnist")
    base, _ = serve(tmp_path / "mirror")
    monkeypatch.setenv("HARMONIA_MNIST_URL", base)
    code = main(["data", "fetch", "--dest", str(tmp_path / "d"), "--only", "mnist", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "SHA-256 mismatch" in err


def test_pinned_fsdd_manifest_matches_the_real_recordings(
    tmp_path: Path, serve, real_source_dir: Path | None
) -> None:
    """Serve the real recordings and fetch them through the pinned manifest (every file verified)."""
    if real_source_dir is None:
        pytest.skip("needs the real FSDD recordings ($HARMONIA_DATA or ../shared/data)")
    manifest = fsdd_manifest()
    assert len(manifest) == 2500
    assert (
        FSDD_URL.endswith("/recordings/") and "26eb9aaf76e81b692f806f9140c2d2777410d7a1" in FSDD_URL
    )
    base, requests = serve(real_source_dir / "fsdd" / "recordings")
    dest = fetch_sources(tmp_path / "cache", fsdd_url=base, only="fsdd", jobs=8, progress=False)
    assert len(requests) == 2500
    assert sorted(p.name for p in (dest / "fsdd" / "recordings").iterdir()) == sorted(manifest)
    assert not (dest / "mnist").exists()


def test_source_resolution_order_and_incomplete_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_source_dir: Path | None
) -> None:
    """--source beats $HARMONIA_DATA beats the fetch cache; a half-fetched cache is refused."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.delenv(ENV_DATA, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(cache))
    with pytest.raises(DataError, match="incomplete"):
        resolve_source(None)
    with pytest.raises(DataError, match="no source data"):
        resolve_source(None, env={ENV_CACHE: str(tmp_path / "none")})
    assert (
        resolve_source(None, allow_builtin=True, env={ENV_CACHE: str(tmp_path / "none")}).kind
        == "builtin"
    )
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"missing \(from \$HARMONIA_DATA\) does not exist"):
        resolve_source(None)
    if real_source_dir is None:
        return
    (cache / "mnist").symlink_to(real_source_dir / "mnist")
    (cache / "fsdd").symlink_to(real_source_dir / "fsdd")
    (cache / "FETCHED.json").write_text('{"parts": {"mnist": {}, "fsdd": {}}}')
    monkeypatch.delenv(ENV_DATA)
    assert resolve_source(None).root == cache
    monkeypatch.setenv(ENV_DATA, str(real_source_dir))
    assert resolve_source(None).root == real_source_dir
    assert resolve_source(str(cache)).root == cache
    assert source_files("mnist", mnist_url="http://x")[0].url.startswith("http://x/t10k-")
