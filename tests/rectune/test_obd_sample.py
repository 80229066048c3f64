"""The OBD sample's provenance (`rectune.obd_sample`): checksums refuse altered files; the index serves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rectune import obd_sample
from rectune.obd_sample import FILES, ObdSampleError, fetch, locate, verify


def _copy(source: Path, into: Path) -> Path:
    for name in FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, into / name)
    return into


def test_the_fixture_sample_is_whole(obd_dir: Path) -> None:
    assert verify(obd_dir) == []


def test_an_altered_or_missing_file_is_named(obd_dir: Path, tmp_path: Path) -> None:
    sample = _copy(obd_dir, tmp_path / "obd")
    with (sample / "bts" / "men.csv").open("ab") as handle:
        handle.write(b"\n")
    (sample / "random" / "item_context.csv").unlink()
    problems = verify(sample)
    assert len(problems) == 2
    assert any("bts/men.csv" in p and "SHA-256" in p for p in problems)
    assert any("random/item_context.csv" in p and "missing" in p for p in problems)


def test_locate_passes_over_a_bad_candidate(obd_dir: Path, tmp_path: Path) -> None:
    bad = _copy(obd_dir, tmp_path / "bad")
    (bad / "random" / "men.csv").write_text("timestamp,item_id\n")
    assert locate((tmp_path / "absent", bad, obd_dir)) == obd_dir
    assert locate((tmp_path / "absent", bad)) is None


def test_a_whole_cache_is_not_fetched_again(obd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _copy(obd_dir, tmp_path / "cache")

    def refuse(_into: Path) -> Path:
        msg = "no download expected"
        raise ObdSampleError(msg)

    monkeypatch.setattr(obd_sample, "_download_wheel", refuse)
    assert fetch(cache) == cache


def test_the_package_index_serves_the_same_sample(obd_dir: Path, tmp_path: Path) -> None:
    fetched = fetch(tmp_path / "obd")
    assert verify(fetched) == []
    for name in FILES:
        assert (fetched / name).read_bytes() == (obd_dir / name).read_bytes()
    assert not list(tmp_path.glob(".obd-fetch-*"))  # the scratch directory is gone
