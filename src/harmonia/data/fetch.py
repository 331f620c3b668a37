"""`harmonia data fetch`: download MNIST (test set) and FSDD recordings from pinned URLs, verified.

Every file is checked against a pinned SHA-256 and written under a temporary name, then renamed,
so a partial download never looks complete. Files already present with the right hash are kept.
FETCHED.json, written last, marks which parts are complete (the source resolver checks it).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from harmonia.data.sources import FETCH_PARTS as PARTS
from harmonia.data.sources import FETCH_STAMP as STAMP
from harmonia.data.sources import default_cache
from harmonia.errors import DataError
from harmonia.files import write_atomic

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# Published by TensorFlow Datasets (tensorflow_datasets/url_checksums/mnist.txt).
MNIST_FILES: dict[str, str] = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/{FSDD_COMMIT}/recordings/"
FSDD_MANIFEST = "fsdd_recordings.sha256"
ENV_MNIST_URL = "HARMONIA_MNIST_URL"
ENV_FSDD_URL = "HARMONIA_FSDD_URL"
TIMEOUT_S = 30.0
MAX_MNIST_BYTES = 4 << 20
"""Cap on a pinned MNIST download (the images file is 1.6 MB); FSDD recordings: 1 MiB each."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: where from, where to (relative to the destination), its SHA-256."""

    url: str
    path: str
    sha256: str
    max_bytes: int = 1 << 20
    """A download that grows past this is stopped and discarded (the pinned file is smaller)."""


def fsdd_manifest() -> dict[str, str]:
    """File name -> SHA-256 of the pinned FSDD recordings (shipped with the package)."""
    text = resources.files("harmonia.data").joinpath(FSDD_MANIFEST).read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            out[name] = digest
    return out


def source_files(
    part: str, mnist_url: str | None = None, fsdd_url: str | None = None
) -> list[RemoteFile]:
    """The pinned files of one part ("mnist" or "fsdd"), with base URLs from arguments, env or defaults."""
    if part == "mnist":
        base = _base(mnist_url or os.environ.get(ENV_MNIST_URL) or MNIST_URL)
        return [
            RemoteFile(base + n, f"mnist/{n}", h, MAX_MNIST_BYTES) for n, h in MNIST_FILES.items()
        ]
    if part == "fsdd":
        base = _base(fsdd_url or os.environ.get(ENV_FSDD_URL) or FSDD_URL)
        return [RemoteFile(base + n, f"fsdd/recordings/{n}", h) for n, h in fsdd_manifest().items()]
    raise DataError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")


def fetch_sources(
    dest: Path | str | None = None,
    *,
    mnist_url: str | None = None,
    fsdd_url: str | None = None,
    only: str | None = None,
    jobs: int = 8,
    progress: bool = True,
) -> Path:
    """Download (or complete) the sources into dest (default: the fetch cache); return dest."""
    target = Path(dest).expanduser() if dest else default_cache()
    for part in (only,) if only else PARTS:
        files = source_files(part, mnist_url, fsdd_url)
        fetch_files(files, target, jobs=jobs, progress=progress, desc=f"fetching {part}")
        _stamp(target, part, files)
    return target


def fetch_files(
    files: list[RemoteFile],
    dest: Path,
    *,
    jobs: int = 8,
    progress: bool = True,
    desc: str = "fetching",
) -> int:
    """Download the files that are missing or wrong under dest; return how many were downloaded.

    The first file is fetched alone, so an offline machine fails fast with one message.
    """
    if jobs < 1:
        raise DataError(f"--jobs must be >= 1, got {jobs}")
    todo = [f for f in files if not _present(dest / f.path, f.sha256)]
    if not todo:
        return 0
    bar = tqdm(total=len(todo), desc=desc, unit="file", disable=not progress)
    try:
        download(todo[0], dest)
        bar.update(1)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(download, f, dest) for f in todo[1:]]
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                future.result()  # re-raises the first failure
    finally:
        bar.close()
    return len(todo)


class _TooLarge(Exception):
    """A download exceeded its file's size cap."""


def download(item: RemoteFile, dest: Path) -> None:
    """Fetch one file into dest/item.path via a temporary name; DataError on network or hash failure."""
    final = dest / item.path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}-{id(item)}")
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(item.url, timeout=TIMEOUT_S) as response,
            partial.open("wb") as out,
        ):
            received = 0
            while chunk := response.read(1 << 16):
                received += len(chunk)
                if received > item.max_bytes:
                    raise _TooLarge
                digest.update(chunk)
                out.write(chunk)
    except _TooLarge:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {item.url}: larger than {item.max_bytes} bytes, which the pinned "
            "file is not; discarded"
        ) from None
    except urllib.error.HTTPError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {item.url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DataError(
            f"cannot download {item.url}: {reason} (offline? fetch needs the internet; "
            "or pass --source DIR with MNIST + FSDD already on disk)"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != item.sha256:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"SHA-256 mismatch for {item.url}: expected {item.sha256}, got {digest.hexdigest()}; "
            "file discarded"
        )
    os.replace(partial, final)


def _stamp(dest: Path, part: str, files: list[RemoteFile]) -> None:
    path = dest / STAMP
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        stamp = {"parts": {}}
    stamp["parts"][part] = {
        "files": len(files),
        "urls": sorted({f.url.rsplit("/", 1)[0] for f in files}),
    }
    write_atomic(path, json.dumps(stamp, indent=2) + "\n")


def _present(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _base(url: str) -> str:
    return url if url.endswith("/") else url + "/"
