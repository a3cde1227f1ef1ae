"""Issue 21, downloads: a slow server cannot hold `fetch` for ever, only a complete download is trusted on first
use, parallel first uses share checksums.lock safely, sources that are not regular files and a full disk each
give one clear line. Servers run on 127.0.0.1 in threads; nothing reads the internet."""
import builtins
import errno
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from expertmerge import downloads
from expertmerge.downloads import LOCK_NAME, ChecksumError, DownloadError, fetch

PAYLOAD = bytes(range(256)) * 400  # 100 kB
HALF = PAYLOAD[: len(PAYLOAD) // 2]
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
BIN = Path(sys.executable).parent / "expertmerge"


def _head(handler, version, **headers):
    handler.protocol_version = version
    handler.send_response(200)
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.end_headers()


def _chunked(handler, body, end):
    _head(handler, "HTTP/1.1", Transfer_Encoding="chunked")
    for start in range(0, len(body), 8192):
        piece = body[start:start + 8192]
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    if end:
        handler.wfile.write(b"0\r\n\r\n")


def _trickle(handler, length, piece, every):
    """Content-Length `length`, sent `piece` bytes at a time every `every` seconds, until the client leaves."""
    _head(handler, "HTTP/1.1", Content_Length=str(length))
    for _ in range(length // piece):
        handler.wfile.write(b"x" * piece)
        handler.wfile.flush()
        time.sleep(every)


ROUTES = {
    "/whole": lambda h: (_head(h, "HTTP/1.1", Content_Length=str(len(PAYLOAD))), h.wfile.write(PAYLOAD)),
    "/http10-whole": lambda h: (_head(h, "HTTP/1.0"), h.wfile.write(PAYLOAD)),
    "/http10-cut": lambda h: (_head(h, "HTTP/1.0"), h.wfile.write(HALF)),  # no length: EOF looks like the end
    "/length-cut": lambda h: (_head(h, "HTTP/1.1", Content_Length=str(len(PAYLOAD))), h.wfile.write(HALF)),
    "/chunked-whole": lambda h: _chunked(h, PAYLOAD, end=True),
    "/chunked-cut": lambda h: _chunked(h, HALF, end=False),
    "/drip": lambda h: _trickle(h, 1000, 1, 0.5),  # 2 bytes/s: each read is quick, the whole is for ever
    "/steady": lambda h: _trickle(h, 10**6, 100, 0.05),  # 2 kB/s
}


@pytest.fixture
def server():
    """`server.url`; `server.state["fixed"]` makes /flaky serve the whole file with its length instead of a cut one."""
    state = {"fixed": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.close_connection = True
            route = ("/whole" if state["fixed"] else "/http10-cut") if self.path == "/flaky" else self.path
            try:
                ROUTES[route](self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


# 1. A server that keeps sending a byte now and then is given up on.

def test_a_dripping_server_is_given_up_on_below_the_minimum_rate(tmp_path, server):
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(f"{server.url}/drip", "unpinned", tmp_path / "out" / "a.bin", min_rate=100, rate_grace=1.0)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert f"{server.url}/drip" in message and "received" in message and "of 1000 bytes" in message, message
    assert "below the minimum 100 bytes/s" in message, message
    assert leftovers(tmp_path / "out") == []


def test_a_download_past_its_deadline_is_given_up_on(tmp_path, server):
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"/steady.*not complete after 1(\.0)? s.*received \d+ of 1000000 bytes"):
        fetch(f"{server.url}/steady", SHA256, tmp_path / "out" / "a.bin", min_rate=0, deadline=1.0)
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path / "out") == []


def test_fetch_command_takes_a_deadline_and_a_minimum_rate(tmp_path, server):
    out = tmp_path / "out" / "a.bin"
    result = subprocess.run([str(BIN), "fetch", "--source", f"{server.url}/drip", "--checksum", "unpinned",
                             "--min-rate", "100", "--deadline", "1.5", "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"{server.url}/drip" in result.stderr, result.stderr
    assert leftovers(out.parent) == []
    for flag, value in (("--min-rate", "-1"), ("--deadline", "0")):
        result = subprocess.run([str(BIN), "fetch", "--source", f"{server.url}/whole", "--checksum", "unpinned",
                                 flag, value, "--out", str(out)], capture_output=True, text=True, timeout=60)
        named = flag.strip("-").replace("-", "_") in result.stderr.replace("-", "_")  # by argparse or by fetch
        assert result.returncode != 0 and named and "Traceback" not in result.stderr, result.stderr


# 2. Only a complete download is trusted on first use.

def test_an_unpinned_http_download_needs_a_length_or_chunked_transfer(tmp_path, server):
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"/http10-cut.*neither a Content-Length nor chunked"):
        fetch(f"{server.url}/http10-cut", "unpinned", out / "a.bin")
    assert leftovers(out) == []  # nothing landed, nothing was trusted
    fetch(f"{server.url}/http10-whole", SHA256, out / "b.bin")  # pinned: the checksum proves it complete
    fetch(f"{server.url}/chunked-whole", "unpinned", out / "c.bin")
    assert (out / "b.bin").read_bytes() == PAYLOAD == (out / "c.bin").read_bytes()
    assert json.loads((out / LOCK_NAME).read_text()) == {"c.bin": SHA256}


@pytest.mark.parametrize("route", ["/length-cut", "/chunked-cut"])
def test_a_cut_download_is_never_trusted(tmp_path, server, route):
    with pytest.raises(DownloadError, match=route):
        fetch(f"{server.url}{route}", "unpinned", tmp_path / "out" / "a.bin")
    assert leftovers(tmp_path / "out") == []


def test_a_cut_first_download_does_not_stick_once_the_source_is_fixed(tmp_path, server):
    """The issue's case: a cut first download used to be trusted, and kept (exit 0) after the server was fixed."""
    dest = tmp_path / "out" / "a.bin"
    with pytest.raises(DownloadError):
        fetch(f"{server.url}/flaky", "unpinned", dest)
    server.state["fixed"] = True
    fetch(f"{server.url}/flaky", "unpinned", dest)
    assert dest.read_bytes() == PAYLOAD and json.loads((dest.parent / LOCK_NAME).read_text()) == {"a.bin": SHA256}


def test_a_lock_mismatch_names_the_file_both_digests_and_what_to_do(tmp_path, server):
    dest = tmp_path / "out" / "a.bin"
    dest.parent.mkdir()
    recorded = "sha256:" + hashlib.sha256(HALF).hexdigest()
    (dest.parent / LOCK_NAME).write_text(json.dumps({"a.bin": recorded}))  # e.g. a cut file trusted before the fix
    with pytest.raises(ChecksumError) as error:
        fetch(f"{server.url}/whole", "unpinned", dest)
    message = str(error.value)
    assert str(dest) in message and recorded in message and SHA256 in message, message
    assert "pin its checksum in config.yaml" in message and '"a.bin" entry' in message, message
    assert not dest.exists()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc")
def test_a_local_copy_must_match_the_size_of_its_source(tmp_path):
    """/proc/cpuinfo is a regular file that says it has 0 bytes: what was read cannot be shown complete."""
    with pytest.raises(DownloadError, match=r"/proc/cpuinfo.*0 bytes"):
        fetch("/proc/cpuinfo", "unpinned", tmp_path / "out" / "cpuinfo")
    assert leftovers(tmp_path / "out") == []


def test_a_local_source_that_grows_while_copied_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "growing.bin"
    source.write_bytes(PAYLOAD)
    monkeypatch.setattr(downloads, "CHUNK_BYTES", 4096)
    real_open = builtins.open

    class Appending:  # the temporary file: each write appends to the source as well, as a writer still at work
        def __init__(self, file):
            self.file = file

        def write(self, data):
            with real_open(source, "ab") as grow:
                grow.write(b"more")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(downloads, "open", lambda path, mode="r", *a, **k: Appending(real_open(path, mode, *a, **k))
                        if "w" in mode else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(DownloadError, match=rf"{source}.*changed size"):
        fetch(source.as_uri(), "unpinned", tmp_path / "out" / "a.bin")
    assert leftovers(tmp_path / "out") == []


# 3. Parallel first use of unpinned files.

CHILD = """
import os, sys, time
from expertmerge.downloads import fetch
sources, out, start, first = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
time.sleep(max(0.0, start - time.time()))
names = sorted(os.listdir(sources))
for name in names[first:] + names[:first]:  # each child starts at another file
    fetch(os.path.join(sources, name), "unpinned", os.path.join(out, name))
"""


def test_sixteen_processes_trusting_eight_files_at_once_share_one_lock(tmp_path):
    sources = []
    for index in range(8):
        sources.append(tmp_path / "sources" / f"file{index}.bin")
        sources[-1].parent.mkdir(exist_ok=True)
        sources[-1].write_bytes(PAYLOAD + bytes([index]))
    out = tmp_path / "out"
    start = time.time() + 2.0  # all start together, after the interpreters are up
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(sources[0].parent), str(out), str(start),
                                  str(k % 8)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for k in range(16)]
    failures = [child.communicate(timeout=120)[0] for child in children if child.wait(timeout=120) != 0]
    assert failures == []
    entries = json.loads((out / LOCK_NAME).read_text())
    assert entries == {s.name: "sha256:" + hashlib.sha256(s.read_bytes()).hexdigest() for s in sources}
    assert not [name for name in leftovers(out) if "partial" in name]


def test_verifying_a_recorded_file_writes_nothing(tmp_path):
    """Only recording takes the flock (creating checksums.lock.flock): a file already recorded is verified by reading
    the lock alone, so weights in a read-only folder can be used."""
    from expertmerge.downloads import trusted_checksum

    (tmp_path / "a.bin").write_bytes(PAYLOAD)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"a.bin": SHA256}))
    assert trusted_checksum(tmp_path / "a.bin") == SHA256
    assert leftovers(tmp_path) == ["a.bin", LOCK_NAME]


def test_a_temporary_of_a_live_writer_is_left_alone(tmp_path):
    """atomic_path removes a killed writer's temporary, never one that another process is still writing."""
    from expertmerge.files import atomic_path

    target = tmp_path / "a.bin"
    with atomic_path(target) as theirs:
        theirs.write_bytes(b"theirs")
        with atomic_path(target) as mine:  # another writer of the same target starts meanwhile
            mine.write_bytes(b"mine")
        assert theirs.exists()
    assert target.read_bytes() == b"theirs"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with atomic_path(target) as temporary:
        stale = temporary.with_name(temporary.name.replace(f".{os.getpid()}~", f".{dead.stdout.strip()}~"))
    stale.write_bytes(b"left by a killed writer")
    earlier = tmp_path / ".a.bin.k2j4_x9q.partial.bin"  # an earlier version's name, without a pid: its writer is gone
    earlier.write_bytes(b"left by an earlier version")
    another = tmp_path / stale.name.replace(".a.bin.", ".a.bin.x.bin.")  # the target a.bin.x.bin's, not a.bin's
    another.write_bytes(b"another target's")
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
    assert leftovers(tmp_path) == sorted([another.name, "a.bin"])


# 4. Sources that are not regular files.

@pytest.mark.parametrize("kind", ["character device", "FIFO", "directory"])
def test_a_source_that_is_not_a_regular_file_is_named_as_such(tmp_path, kind):
    if kind == "character device":
        source = "/dev/zero"
    elif kind == "FIFO":
        source = tmp_path / "pipe"
        os.mkfifo(source)
    else:
        source = tmp_path / "folder"
        source.mkdir()
    with pytest.raises(DownloadError, match=rf"source {source} is a {kind}, not a regular file"):
        fetch(str(source), "unpinned", tmp_path / "out" / "a.bin")
    assert leftovers(tmp_path / "out") == []


# 5. A full disk names the file being written.

@pytest.fixture
def full_disk(monkeypatch):
    real_open = builtins.open

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def opening(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return Full(file) if "w" in mode else file

    monkeypatch.setattr(downloads, "open", opening, raising=False)


@pytest.mark.parametrize("kind", ["local", "http"])
def test_a_full_disk_names_the_destination(tmp_path, server, full_disk, kind):
    source = tmp_path / "a.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "a.bin"
    with pytest.raises(OSError) as error:  # not a DownloadError: the source is fine, the disk is not
        fetch(str(source) if kind == "local" else f"{server.url}/whole", SHA256, dest)
    assert error.value.__cause__.errno == errno.ENOSPC and f"cannot write {dest}: No space left" in str(error.value)
    assert leftovers(dest.parent) == []
