"""Where the Open Bandit Dataset sample comes from when `shared/data/obd` is not beside the clone.

The OBD "men" sample that the off-policy check and the ingest test read is the
small sample shipped inside the Open Bandit Pipeline wheel (`obp` 0.4.1,
Apache-2.0) on the package index: the same bytes as `shared/data/obd`.  A fresh
machine with only Python and the package index can therefore run those tests:
the test fixture looks for the sample beside the clone, else in
`.cache/obd`, and only then fetches the wheel with pip and unpacks the four
files it needs.  Every file is checked against its SHA-256, so a changed or
partial download is refused rather than read.

Pure parts (`locate`, `verify`) are separate from the one I/O step (`fetch`).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from rectune.errors import RectuneError

WHEEL_REQUIREMENT = "obp==0.4.1"
WHEEL_NAME = "obp-0.4.1-py3-none-any.whl"
WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
# Layout of `shared/data/obd` (policy/file) -> path inside the wheel, and the file's SHA-256.
FILES: dict[str, tuple[str, str]] = {
    "bts/men.csv": (
        "obp/dataset/obd/bts/men/men.csv",
        "db6d1f7ed2d591ba521533e45286d4c1fba7fe57a8ad2e80342210335f43c527",
    ),
    "bts/item_context.csv": (
        "obp/dataset/obd/bts/men/item_context.csv",
        "3b411ed6b0471316321a6b93f4f756bb25888eac6218cd71d0b603d41d85732d",
    ),
    "random/men.csv": (
        "obp/dataset/obd/random/men/men.csv",
        "ede6d08c6877f99cd3770f7d09e26c738e6aa6de4445ccccfb1356ba5d06b1eb",
    ),
    "random/item_context.csv": (
        "obp/dataset/obd/random/men/item_context.csv",
        "6d855c2b7e917d0448d71bbe62c023147495882c0fdc8c41e86fef86abf9fe09",
    ),
}
_PIP_TIMEOUT_S = 300


class ObdSampleError(RectuneError):
    """The OBD sample is neither beside the clone nor fetchable, or a file fails its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> list[str]:
    """The problems with a sample directory (missing files, wrong checksums); empty when it is whole.

    Called by `locate` to accept a directory and by `fetch` after unpacking.
    """
    problems: list[str] = []
    for name, (_, expected) in FILES.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{path}: SHA-256 is not the obp 0.4.1 sample's")
    return problems


def locate(candidates: Iterable[Path]) -> Path | None:
    """The first candidate directory that holds the whole, unaltered sample, else None.

    The test fixture passes `shared/data/obd` beside the clone, then the cache.
    """
    for directory in candidates:
        if directory.is_dir() and not verify(directory):
            return directory
    return None


def _download_wheel(into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(into),
        WHEEL_REQUIREMENT,
    ]
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv: this interpreter's pip and a pinned requirement
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        msg = f"pip download {WHEEL_REQUIREMENT} took over {_PIP_TIMEOUT_S} s"
        raise ObdSampleError(msg, hint="is the package index reachable?") from err
    wheel = into / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        msg = f"pip download {WHEEL_REQUIREMENT} failed: {done.stderr.strip()[-400:]}"
        raise ObdSampleError(msg, hint="is the package index reachable? or put the sample in shared/data/obd")
    if _sha256(wheel) != WHEEL_SHA256:
        msg = f"{WHEEL_NAME}: SHA-256 is not the published wheel's"
        raise ObdSampleError(msg, hint="the index served a different file; refusing to read it")
    return wheel


def fetch(cache_dir: Path) -> Path:
    """Unpack the sample into `cache_dir` from the `obp` wheel on the package index; return `cache_dir`.

    Called by the test fixture when no whole sample is found.  Idempotent: a
    whole cache is returned untouched.  The files land under a temporary name
    and move into place only once every checksum holds, so an interrupted run
    leaves no half sample behind.
    """
    if not verify(cache_dir):
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir.parent, prefix=".obd-fetch-") as scratch:
        work = Path(scratch)
        wheel = _download_wheel(work / "wheel")
        staged = work / "obd"
        with zipfile.ZipFile(wheel) as archive:
            for name, (member, _) in FILES.items():
                target = staged / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
        problems = verify(staged)
        if problems:
            msg = "unpacked OBD sample fails its checks: " + "; ".join(problems)
            raise ObdSampleError(msg, hint="the wheel's contents changed; put the sample in shared/data/obd")
        shutil.rmtree(cache_dir, ignore_errors=True)
        staged.rename(cache_dir)
    return cache_dir


if __name__ == "__main__":  # by hand: `python -m rectune.obd_sample [DEST]` (default .cache/obd)
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache") / "obd"))
