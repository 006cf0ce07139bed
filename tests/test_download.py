"""Download manager: streaming, resume, checksums and safe extraction, against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from corrbench.download import (ChecksumError, UnsafeArchiveError, fetch, install_archive, safe_extract,
                                sha256_file)
from corrbench.errors import DataError
from corrbench.testing.datasets import LoopbackServer

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_streams_verifies_and_renames_into_place(tmp_path):
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        out = fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False, chunk_size=65536)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert srv.requests == [("/f.bin", None)]


def test_dropped_connection_is_resumed_with_a_range_request(tmp_path):
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        srv.fail_after["/f.bin"] = 300_000
        out = fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False, chunk_size=65536)
    assert out.read_bytes() == PAYLOAD
    assert srv.requests[0] == ("/f.bin", None)
    resumed = srv.requests[1][1]
    assert resumed is not None and resumed.startswith("bytes=") and int(resumed[6:-1]) >= 1
    assert int(resumed[6:-1]) <= 300_000


def test_partial_file_from_an_earlier_run_is_continued(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:12345])
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
    assert srv.requests == [("/f.bin", "bytes=12345-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_complete_partial_file_gets_416_and_is_accepted(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
    assert srv.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept")
    with LoopbackServer({"/f.bin": PAYLOAD}, honour_range=False) as srv:
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_rejected_and_nothing_is_kept(tmp_path):
    wrong = "0" * 64
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        with pytest.raises(ChecksumError, match=rf"f.bin: sha256 mismatch: expected {wrong}, got {SHA}"):
            fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=wrong, progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_existing_verified_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "f.bin").write_bytes(PAYLOAD)
    with LoopbackServer({"/f.bin": PAYLOAD}) as srv:
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
        assert srv.requests == []
        (tmp_path / "f.bin").write_bytes(b"corrupted")  # a wrong existing copy is fetched again
        fetch(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256=SHA, progress=False)
        assert len(srv.requests) == 1
    assert sha256_file(tmp_path / "f.bin") == SHA


def test_http_error_names_the_url(tmp_path):
    with LoopbackServer({}) as srv:
        with pytest.raises(DataError, match=r"/missing.bin: HTTP 404"):
            fetch(f"{srv.url}/missing.bin", tmp_path / "m.bin", progress=False)


def test_unreachable_server_fails_after_retries(tmp_path):
    with LoopbackServer({}) as srv:
        url = f"{srv.url}/x.bin"
    with pytest.raises(DataError, match=r"x.bin: download failed after 2 attempts"):
        fetch(url, tmp_path / "x.bin", progress=False, retries=1, timeout=2)


# ------------------------------------------------------------------------------------------
# Archives
# ------------------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _dev(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


@pytest.mark.parametrize("evil, message", [
    (_file("../escape.txt"), "contains '..'"),
    (_file("data/../../escape.txt"), "contains '..'"),
    (_file("/tmp/absolute.txt"), "absolute path"),
    (_link("data/link", "../../outside"), "leaves the extraction folder"),
    (_link("data/abs", "/etc/passwd"), "absolute path"),
    (_link("data/hard", "../outside", tarfile.LNKTYPE), "contains '..'"),
    (_dev("data/null"), "device file"),
])
def test_malicious_tar_is_rejected_before_anything_is_written(tmp_path, evil, message):
    archive = _tar(tmp_path / "evil.tar.gz", [_file("data/ok.txt", b"fine"), evil, _file("data/after.txt")])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError, match=message) as info:
        safe_extract(archive, dest)
    assert "evil.tar.gz" in str(info.value)
    assert not any(dest.rglob("*")), "nothing may be extracted from a rejected archive"
    assert not (tmp_path / "out" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_symlink_then_write_through_it_is_rejected(tmp_path):
    # the classic two-step escape: a link to the parent, then a file "through" the link
    archive = _tar(tmp_path / "evil.tar", [_link("up", ".."), _file("up/escape.txt")], mode="w")
    with pytest.raises(UnsafeArchiveError, match="leaves the extraction folder"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_links_inside_the_root_are_kept(tmp_path):
    archive = _tar(tmp_path / "ok.tar.bz2", [_file("d/a.txt", b"A"), _link("d/b.txt", "a.txt"),
                                             _link("d/c.txt", "d/a.txt", tarfile.LNKTYPE)], mode="w:bz2")
    dest = safe_extract(archive, tmp_path / "dest")
    assert (dest / "d" / "b.txt").is_symlink() and (dest / "d" / "b.txt").read_bytes() == b"A"
    assert (dest / "d" / "c.txt").read_bytes() == b"A"


def _zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("entry, message", [
    (("../escape.txt", b"x", None), "contains '..'"),
    (("/abs.txt", b"x", None), "absolute path"),
    (("d/link", b"../../outside", stat.S_IFLNK | 0o777), "leaves the extraction folder"),
    (("d/fifo", b"", stat.S_IFIFO | 0o644), "device file, FIFO"),
])
def test_malicious_zip_is_rejected(tmp_path, entry, message):
    archive = _zip(tmp_path / "evil.zip", [("d/ok.txt", b"fine", None), entry])
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, tmp_path / "dest")
    assert not any((tmp_path / "dest").rglob("*"))


def test_zip_extracts_files_and_inner_links(tmp_path):
    archive = _zip(tmp_path / "ok.zip", [("d/a.txt", b"A", None), ("d/l", b"a.txt", stat.S_IFLNK | 0o777)])
    dest = safe_extract(archive, tmp_path / "dest")
    assert (dest / "d" / "a.txt").read_bytes() == b"A"
    assert os.readlink(dest / "d" / "l") == "a.txt"


def test_install_archive_renames_the_inner_folder_into_place(tmp_path):
    archive = _tar(tmp_path / "ds.tgz", [_file("Data/x.txt", b"1"), _file("Data/sub/y.txt", b"2"),
                                         _file("README", b"r")])
    target = install_archive(archive, tmp_path / "root" / "MyData", inner="Data")
    assert (target / "x.txt").read_bytes() == b"1" and (target / "sub" / "y.txt").read_bytes() == b"2"
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["MyData"]  # no partial folder left behind
    with pytest.raises(DataError, match="already exists"):
        install_archive(archive, target, inner="Data")


def test_interrupted_install_leaves_no_dataset_that_looks_whole(tmp_path):
    good = _tar(tmp_path / "ds.tgz", [_file(f"Data/f{i}.txt", os.urandom(20000)) for i in range(20)])
    truncated = tmp_path / "trunc.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="trunc.tgz: cannot extract"):
        install_archive(truncated, tmp_path / "root" / "MyData", inner="Data")
    assert list((tmp_path / "root").iterdir()) == []
    # a stale partial folder from a killed run is cleaned up by the next install
    (tmp_path / "root" / ".MyData.partial-dead").mkdir()
    install_archive(good, tmp_path / "root" / "MyData", inner="Data")
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["MyData"]
    assert len(list((tmp_path / "root" / "MyData").iterdir())) == 20


def test_missing_inner_folder_is_named(tmp_path):
    archive = _tar(tmp_path / "ds.tgz", [_file("Other/x.txt")])
    with pytest.raises(DataError, match="expected a top-level folder 'Data', found Other"):
        install_archive(archive, tmp_path / "MyData", inner="Data")
    assert not (tmp_path / "MyData").exists()
