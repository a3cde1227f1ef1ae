"""Verified fetch from local paths, file:// and a local HTTP server; mismatches leave nothing."""
import hashlib
import http.server
import socket
import threading

import pytest

from expertmerge.downloads import (ChecksumError, DownloadError, fetch, file_checksum, parse_checksum,
                                   verify_file)

PAYLOAD = bytes(range(256)) * 4099  # ~1 MB: more than one read chunk
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
WRONG = "sha256:" + "0" * 64


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "served" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def server(source):
    """HTTP server on 127.0.0.1 serving source's folder; `.hits` lists requested paths."""
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(source.parent), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.hits = hits
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_parse_checksum():
    assert parse_checksum("MD5:C58F30108F718F92721AF3B95E74349A") == ("md5", "c58f30108f718f92721af3b95e74349a")
    assert parse_checksum(SHA256) == ("sha256", SHA256[7:])
    for bad, message in (("c58f30108f718f92721af3b95e74349a", "algorithm:hexdigest"), ("sha1:" + "0" * 40, "not supported"),
                         ("md5:123", "32 hexadecimal"), ("sha256:" + "g" * 64, "64 hexadecimal")):
        with pytest.raises(ValueError, match=message):
            parse_checksum(bad)


def test_file_checksum_and_verify(source):
    assert file_checksum(source, "md5") == MD5[4:] and file_checksum(source, "sha256") == SHA256[7:]
    verify_file(source, MD5)
    with pytest.raises(ChecksumError, match=rf"{source}.*expected 0{{64}}, got {SHA256[7:]}"):
        verify_file(source, WRONG)


@pytest.mark.parametrize("kind", ["path", "file_url"])
def test_fetch_local(tmp_path, source, kind):
    url = str(source) if kind == "path" else source.as_uri()
    dest = tmp_path / "out" / "data.bin"
    assert fetch(url, MD5, dest) == dest
    assert dest.read_bytes() == PAYLOAD and leftovers(dest.parent) == ["data.bin"]


def test_fetch_http_and_skip_when_present(tmp_path, server):
    dest = tmp_path / "out" / "data.bin"
    fetch(f"{server.url}/data.bin", SHA256, dest)
    assert dest.read_bytes() == PAYLOAD and server.hits == ["/data.bin"]
    fetch(f"{server.url}/data.bin", SHA256, dest)  # already there with the right checksum
    assert server.hits == ["/data.bin"]


def test_fetch_replaces_wrong_existing_file(tmp_path, server):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    fetch(f"{server.url}/data.bin", SHA256, dest)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kind", ["path", "http"])
def test_checksum_mismatch_leaves_nothing(tmp_path, source, server, kind):
    url = str(source) if kind == "path" else f"{server.url}/data.bin"
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=rf"{url}.*expected 0{{64}}, got {SHA256[7:]}"):
        fetch(url, WRONG, out / "data.bin")
    assert leftovers(out) == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_says_how_to_place_by_hand(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    dest = tmp_path / "out" / "cifar-10-python.tar.gz"
    with pytest.raises(DownloadError) as error:
        fetch(url, MD5, dest, timeout=5)
    message = str(error.value)
    assert url in message and f"place the file by hand at {dest.resolve()}" in message and MD5 in message
    assert leftovers(dest.parent) == []


def test_missing_page_and_missing_local_file(tmp_path, server):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server.url}/absent.bin", MD5, out / "a.bin")
    with pytest.raises(DownloadError, match=r"no such file.*place the file by hand"):
        fetch(str(tmp_path / "nowhere.bin"), MD5, out / "b.bin")
    with pytest.raises(ValueError, match="allowed sources"):
        fetch("ftp://example.org/x", MD5, out / "c.bin")
    assert leftovers(out) == []


def test_an_unpinned_file_is_trusted_on_first_use_and_verified_after(tmp_path, source, server):
    """Unpinned: the first fetch records the file's SHA-256 in checksums.lock beside it; a later fetch or use of
    a different file is refused until the digest is pinned (or its lock entry deleted)."""
    from expertmerge.downloads import LOCK_NAME, trusted_checksum

    dest = tmp_path / "out" / "data.bin"
    fetch(f"{server.url}/data.bin", "unpinned", dest)
    lock = dest.parent / LOCK_NAME
    assert lock.exists() and SHA256 in lock.read_text()
    assert leftovers(dest.parent) == ["checksums.lock", "checksums.lock.flock", "data.bin"]  # .flock: see _holding
    assert trusted_checksum(dest) == SHA256  # a later use verifies it
    fetch(f"{server.url}/data.bin", "unpinned", dest)  # present and unchanged: fine

    dest.write_bytes(PAYLOAD[:-1])  # the file changes under the same name
    with pytest.raises(ChecksumError, match="changed since it was first used"):
        trusted_checksum(dest)
    with pytest.raises(ChecksumError, match="pin its checksum in config.yaml"):
        fetch(f"{server.url}/data.bin", "unpinned", dest)  # present but changed: refused, nothing fetched over it

    dest.unlink()
    source.write_bytes(PAYLOAD[::-1])  # the server now serves another file: refused, and it never lands
    with pytest.raises(ChecksumError, match="changed since it was first used"):
        fetch(f"{server.url}/data.bin", "unpinned", dest)
    assert leftovers(dest.parent) == ["checksums.lock", "checksums.lock.flock"]
    fetch(f"{server.url}/data.bin", "sha256:" + hashlib.sha256(PAYLOAD[::-1]).hexdigest(), dest)  # pinned: fine
