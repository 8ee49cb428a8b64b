"""Downloads of official weights (cached, verified by sha256, recorded in the lock) and the registry's resolution.

Everything is served from a local ``http.server`` on 127.0.0.1: no test needs the internet.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from requestflow.board import resolve
from requestflow.board.catalogue import CONFIGS, model_for
from requestflow.board.download import (
    DownloadError,
    cached_download_path,
    extract_member,
    fetch,
    lock_path,
    read_lock,
)
from requestflow.board.files import sha256_file
from requestflow.errors import UserError
from tests.served import make_tar

PAYLOAD = b"official weights, or something that stands in for them\n" * 1000
QUANT_TFLITE = "mobilenet_v1_0.25_128_quant.tflite"
QUANT_SHA256 = "cb273c23ee76374b05b9583177e28aa19744858a7679c56a250e83d0333da785"  # registry.json's local entry


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tgz(path: Path, members: dict[str, bytes]) -> Path:
    """A .tgz whose members are named exactly as given (no normalisation by tarfile)."""
    return make_tar(path, members, "w:gz")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@dataclass
class LocalServer:
    root: Path
    base_url: str
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def serve(self, name: str, data: bytes) -> str:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self.url(name)

    def count(self, name: str) -> int:
        return sum(1 for path in self.requests if path == f"/{name}")


@pytest.fixture(autouse=True)
def _own_cache_lock_and_data(tmp_path, monkeypatch):
    """Each test has its own cache, lock file and an empty data folder, so that nothing is found before it fetches."""
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REQUESTFLOW_WEIGHTS_LOCK", str(tmp_path / "lock" / "weights.lock.json"))
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("REQUESTFLOW_DATA", str(empty))
    monkeypatch.delenv("REQUESTFLOW_OFFLINE", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving ``tmp_path/served``, counting the GET requests it answers."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def write_lock(files: dict[str, str]) -> None:
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lock_version": 1, "files": {url: {"sha256": sha} for url, sha in files.items()}}))


# --- fetch ---------------------------------------------------------------------------------------------------------

class TestAFirstDownload:
    def test_writes_the_file_into_the_cache_and_records_its_sha256_in_the_lock(self, server, tmp_path, capsys):
        url = server.serve("weights.bin", PAYLOAD)
        path = fetch(url, progress=False)
        assert path == cached_download_path(url)
        assert path.read_bytes() == PAYLOAD
        assert lock_path() == tmp_path / "lock" / "weights.lock.json"
        document = json.loads(lock_path().read_text())
        assert document["lock_version"] == 1
        assert document["files"][url] == {"sha256": sha256_bytes(PAYLOAD)}
        assert "recorded sha256" in capsys.readouterr().err

    def test_a_second_fetch_uses_the_cache_without_a_request(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        first = fetch(url, progress=False)
        second = fetch(url, progress=False)
        assert first == second
        assert server.count("weights.bin") == 1

    def test_leaves_no_temporary_file_beside_the_download(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        path = fetch(url, progress=False)
        assert files_under(path.parent) == [path]

    def test_does_not_touch_the_committed_lock(self, server):
        from requestflow.board.download import PACKAGE_LOCK

        before = PACKAGE_LOCK.read_text()
        fetch(server.serve("weights.bin", PAYLOAD), progress=False)
        assert PACKAGE_LOCK.read_text() == before


class TestAPinnedSha256:
    def test_a_mismatch_pinned_in_the_lock_is_refused_naming_the_url_and_both_hashes(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        wrong = "0" * 64
        write_lock({url: wrong})
        with pytest.raises(UserError) as excinfo:
            fetch(url, progress=False)
        message = str(excinfo.value)
        assert url in message
        assert sha256_bytes(PAYLOAD) in message
        assert wrong in message
        assert "not kept" in message

    def test_a_refused_file_leaves_nothing_in_the_cache_not_even_a_temporary_file(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        with pytest.raises(UserError, match="sha256 mismatch"):
            fetch(url, sha256="f" * 64, progress=False)
        assert files_under(cached_download_path(url).parent) == []

    def test_a_refused_file_does_not_change_the_pin(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        write_lock({url: "0" * 64})
        with pytest.raises(UserError):
            fetch(url, progress=False)
        assert read_lock(lock_path()) == {url: "0" * 64}

    def test_a_matching_pin_is_accepted(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        write_lock({url: sha256_bytes(PAYLOAD)})
        assert fetch(url, progress=False).read_bytes() == PAYLOAD

    def test_an_unreadable_lock_file_is_a_user_error_naming_it(self, server):
        lock_path().parent.mkdir(parents=True, exist_ok=True)
        lock_path().write_text("{not json")
        with pytest.raises(UserError, match="unreadable weights lock file"):
            fetch(server.serve("weights.bin", PAYLOAD), progress=False)


class TestACachedFileCorruptedOnDisk:
    def test_is_downloaded_again_and_verified(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        path = fetch(url, progress=False)
        path.write_bytes(b"bit rot")
        again = fetch(url, progress=False)
        assert again == path
        assert again.read_bytes() == PAYLOAD
        assert sha256_file(again) == read_lock(lock_path())[url]
        assert server.count("weights.bin") == 2

    def test_is_refused_and_not_kept_when_the_server_now_serves_other_bytes(self, server):
        url = server.serve("weights.bin", PAYLOAD)
        path = fetch(url, progress=False)
        path.write_bytes(b"bit rot")
        server.serve("weights.bin", b"replaced upstream")
        with pytest.raises(UserError, match="sha256 mismatch"):
            fetch(url, progress=False)
        assert files_under(path.parent) == []
        assert read_lock(lock_path())[url] == sha256_bytes(PAYLOAD)


class TestAnUnreachableUrl:
    def test_a_closed_port_raises_download_error(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/weights.bin"
        with pytest.raises(DownloadError, match="cannot download"):
            fetch(url, progress=False)
        assert files_under(cached_download_path(url).parent) == []
        assert not lock_path().exists()

    def test_a_missing_file_http_404_raises_download_error_naming_the_url(self, server):
        url = server.url("nowhere.bin")
        with pytest.raises(DownloadError) as excinfo:
            fetch(url, progress=False)
        assert url in str(excinfo.value)
        assert files_under(cached_download_path(url).parent) == []

    def test_download_error_is_not_a_user_error_so_callers_can_fall_back(self):
        assert not issubclass(DownloadError, UserError)


# --- extract_member ------------------------------------------------------------------------------------------------

class TestExtractingMembersOfAnArchive:
    def test_extracts_only_the_members_whose_base_name_matches(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {
            "./mobilenet_v1_0.25_128.tflite": b"tflite",
            "./mobilenet_v1_0.25_128.ckpt.index": b"index",
            "./mobilenet_v1_0.25_128.ckpt.data-00000-of-00001": b"data",
            "./mobilenet_v1_0.25_128_info.txt": b"info",
        })
        extracted = extract_member(archive, "mobilenet_v1_0.25_128.tflite")
        assert [p.name for p in extracted] == ["mobilenet_v1_0.25_128.tflite"]
        assert extracted[0].read_bytes() == b"tflite"
        assert [p.name for p in files_under(archive.parent / "extracted") if not p.name.startswith(".")] == [
            "mobilenet_v1_0.25_128.tflite"]

    def test_a_wildcard_picks_every_checkpoint_piece_and_nothing_else(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tar.gz", {
            "./m.ckpt.index": b"index",
            "./m.ckpt.data-00000-of-00001": b"data",
            "./m.ckpt.meta": b"meta",
            "./m.tflite": b"tflite",
            "./m_eval.pbtxt": b"graph",
        })
        names = sorted(p.name for p in extract_member(archive, "*.ckpt.*"))
        assert names == ["m.ckpt.data-00000-of-00001", "m.ckpt.index", "m.ckpt.meta"]
        assert not (archive.parent / "extracted" / "m.tflite").exists()

    def test_members_in_subfolders_are_extracted_flat(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {"deep/er/m.tflite": b"tflite"})
        (path,) = extract_member(archive, "*.tflite")
        assert path == archive.parent / "extracted" / "m.tflite"
        assert path.read_bytes() == b"tflite"

    def test_a_second_call_reuses_the_extraction_without_opening_the_archive(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {"m.tflite": b"tflite"})
        first = extract_member(archive, "*.tflite")
        archive.unlink()
        assert extract_member(archive, "*.tflite") == first

    def test_a_pattern_that_matches_nothing_is_refused_naming_the_archive_and_the_pattern(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {"m.tflite": b"tflite"})
        with pytest.raises(UserError, match=r"no member matching '\*\.ckpt\.\*'") as excinfo:
            extract_member(archive, "*.ckpt.*")
        assert str(archive) in str(excinfo.value)
        assert not (archive.parent / "extracted").exists()

    def test_a_folder_or_symlink_of_a_matching_name_is_not_a_member(self, tmp_path):
        archive = tmp_path / "dl" / "model.tgz"
        archive.parent.mkdir()
        with tarfile.open(archive, "w:gz") as tar:
            folder = tarfile.TarInfo("m.tflite")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            link = tarfile.TarInfo("n.tflite")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
        with pytest.raises(UserError, match="no member matching"):
            extract_member(archive, "*.tflite")

    def test_a_file_that_is_not_an_archive_is_a_user_error(self, tmp_path):
        archive = tmp_path / "dl" / "model.tgz"
        archive.parent.mkdir()
        archive.write_bytes(b"<html>not found</html>")
        with pytest.raises(UserError, match="cannot extract"):
            extract_member(archive, "*.tflite")


class TestPathTraversalInAnArchive:
    @pytest.mark.parametrize("evil", ["../evil.tflite", "a/../../evil.tflite", "../../evil.tflite"])
    def test_a_member_that_climbs_out_is_refused_and_nothing_is_written_outside(self, tmp_path, evil):
        archive = make_tgz(tmp_path / "top" / "dl" / "model.tgz", {evil: b"EVIL", "good.tflite": b"good"})
        with pytest.raises(UserError, match=f"refusing member '{re.escape(evil)}', whose path leaves"):
            extract_member(archive, "*.tflite")
        assert list(tmp_path.rglob("evil.tflite")) == []
        assert list(tmp_path.rglob(".extract.*")) == []  # the staging folder is cleaned up
        assert not (archive.parent / "extracted").exists()

    def test_a_clean_member_of_the_same_archive_can_still_be_picked_alone(self, tmp_path):
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {"../evil.tflite": b"EVIL", "good.tflite": b"good"})
        assert [p.name for p in extract_member(archive, "good.tflite")] == ["good.tflite"]
        assert list(tmp_path.rglob("evil.tflite")) == []

    def test_an_absolute_member_neither_moves_nor_replaces_a_file_outside(self, tmp_path):
        victim = tmp_path / "elsewhere" / "victim.tflite"
        victim.parent.mkdir()
        victim.write_bytes(b"VICTIM")
        archive = make_tgz(tmp_path / "dl" / "model.tgz", {str(victim): b"ARCHIVE"})
        try:
            extracted = extract_member(archive, "*.tflite")
        except UserError:
            extracted = []
        assert victim.is_file() and victim.read_bytes() == b"VICTIM"
        assert all(path.read_bytes() == b"ARCHIVE" for path in extracted)


# --- registry resolution, end to end against the local server ------------------------------------------------------

MODEL = model_for(0.25, 128)
QUANT = "2018_08_02_quant"


@pytest.fixture
def local_registry(server, tmp_path, models_dir, monkeypatch):
    """The real registry, every release's URL pointing at the local server; only the quantized .tgz is served.

    The .tgz holds a real .tflite (copied from the shared data into tmp_path) beside the other files an official
    archive has."""
    tflite = tmp_path / "src" / QUANT_TFLITE
    tflite.parent.mkdir()
    shutil.copyfile(models_dir / QUANT_TFLITE, tflite)
    make_tgz(server.root / QUANT / "mobilenet_v1_0.25_128_quant.tgz", {
        f"./{QUANT_TFLITE}": tflite.read_bytes(),
        "./mobilenet_v1_0.25_128_quant_info.txt": b"Model: mobilenet_v1_0.25_128_quant\n",
        "./mobilenet_v1_0.25_128_quant.ckpt.index": b"not used here",
    })
    real = resolve.releases()
    patched = {name: {**spec, "url": f"{server.base_url}/{name}/{spec['url'].rsplit('/', 1)[-1]}"}
               for name, spec in real.items()}
    monkeypatch.setattr(resolve, "releases", lambda: patched)
    return server


def served_url(server: LocalServer) -> str:
    return server.url(f"{QUANT}/mobilenet_v1_0.25_128_quant.tgz")


class TestResolvingARegistryRelease:
    def test_downloads_first_then_uses_the_cache(self, local_registry):
        first = resolve.resolve(MODEL, "tflite", release=QUANT)
        assert (first.origin, first.format, first.release, first.random) == ("download", "tflite", QUANT, False)
        assert first.url == served_url(local_registry)
        assert [p.name for p in first.paths] == [QUANT_TFLITE]
        assert first.sha256 == QUANT_SHA256

        second = resolve.resolve(MODEL, "tflite", release=QUANT)
        assert (second.origin, second.sha256, second.paths) == ("cache", QUANT_SHA256, first.paths)
        assert local_registry.count(f"{QUANT}/mobilenet_v1_0.25_128_quant.tgz") == 1

    def test_records_the_archives_sha256_in_the_lock(self, local_registry):
        resolved = resolve.resolve(MODEL, "tflite", release=QUANT)
        archive = cached_download_path(resolved.url)
        assert read_lock(lock_path()) == {resolved.url: sha256_file(archive)}

    def test_the_downloaded_file_imports_as_the_releases_quantized_weights(self, local_registry):
        resolved = resolve.resolve(MODEL, "tflite", release=QUANT)
        assert resolved.source_precision == "uint8"
        canonical = resolved.canonical_for(MODEL)
        assert canonical.classes == 1001
        assert canonical.source["release"] == QUANT
        description = resolved.describe()
        assert description["origin"] == "download" and description["url"] == resolved.url

    def test_an_offline_run_still_uses_what_was_downloaded_before(self, local_registry, monkeypatch):
        resolve.resolve(MODEL, "tflite", release=QUANT)
        monkeypatch.setenv("REQUESTFLOW_OFFLINE", "1")
        assert resolve.resolve(MODEL, "tflite", release=QUANT).origin == "cache"

    def test_releases_that_cannot_be_downloaded_are_skipped_in_release_order(self, local_registry):
        resolved = resolve.resolve(MODEL, "tflite")  # 2018_02_22, keras and 2017_06_14 are not served: 404
        assert (resolved.release, resolved.origin) == (QUANT, "download")
        assert len(local_registry.requests) == len(resolve.releases())

    def test_a_local_copy_in_the_shared_data_is_used_without_a_request(self, local_registry, data_dir, monkeypatch):
        monkeypatch.setenv("REQUESTFLOW_DATA", str(data_dir))
        resolved = resolve.resolve(MODEL, "tflite", release=QUANT)
        assert (resolved.origin, resolved.sha256) == ("local", QUANT_SHA256)
        assert local_registry.requests == []

    def test_an_archive_that_fails_its_pin_is_refused(self, local_registry):
        write_lock({served_url(local_registry): "0" * 64})
        with pytest.raises(UserError, match="sha256 mismatch"):
            resolve.resolve(MODEL, "tflite", release=QUANT)

    def test_an_unknown_release_is_refused_listing_the_known_ones(self, local_registry):
        with pytest.raises(UserError, match=f"unknown weights release '2099_01_01'; known: .*{QUANT}"):
            resolve.resolve(MODEL, "tflite", release="2099_01_01")


class TestOfflineWithNothingOnDisk:
    @pytest.fixture(autouse=True)
    def _offline(self, monkeypatch):
        monkeypatch.setenv("REQUESTFLOW_OFFLINE", "1")

    def test_a_performance_run_falls_back_to_random_weights_labelled_random(self, local_registry, capsys):
        resolved = resolve.resolve(MODEL, "tflite", allow_random=True)
        assert resolved.random
        assert (resolved.format, resolved.origin, resolved.paths) == ("random", "random", [])
        assert resolved.describe()["random"] is True
        assert "RANDOMLY INITIALISED" in capsys.readouterr().err
        assert local_registry.requests == []

    def test_without_random_allowed_it_is_a_user_error_saying_why(self, local_registry):
        with pytest.raises(UserError, match=r"no weights for mobilenet-v1-0\.25-128 .*offline"):
            resolve.resolve(MODEL, "tflite", allow_random=False)
        assert local_registry.requests == []


# --- the real registry's URLs --------------------------------------------------------------------------------------

class TestTheRealRegistrysUrls:
    @pytest.mark.parametrize(("release", "width", "resolution", "url"), [
        ("2017_06_14", 0.5, 160, "http://download.tensorflow.org/models/mobilenet_v1_0.50_160_2017_06_14.tar.gz"),
        ("2017_06_14", 1.0, 224, "http://download.tensorflow.org/models/mobilenet_v1_1.0_224_2017_06_14.tar.gz"),
        ("2017_06_14", 0.25, 128, "http://download.tensorflow.org/models/mobilenet_v1_0.25_128_2017_06_14.tar.gz"),
        ("2018_02_22", 0.5, 160,
         "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/mobilenet_v1_0.5_160.tgz"),
        ("2018_02_22", 1.0, 224,
         "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/mobilenet_v1_1.0_224.tgz"),
        ("2018_08_02_quant", 0.5, 160,
         "http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_0.5_160_quant.tgz"),
        ("2018_08_02_quant", 0.75, 192,
         "http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_0.75_192_quant.tgz"),
        ("keras", 0.5, 160,
         "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_5_0_160_tf.h5"),
        ("keras", 1.0, 224,
         "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_1_0_224_tf.h5"),
        ("keras", 0.25, 128,
         "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_128_tf.h5"),
    ])
    def test_spells_the_official_url(self, release, width, resolution, url):
        assert resolve.release_url(release, model_for(width, resolution)) == url

    @pytest.mark.parametrize("release", ["2017_06_14", "2018_02_22", "2018_08_02_quant", "keras"])
    def test_every_config_gets_a_distinct_fully_formatted_url(self, release):
        urls = [resolve.release_url(release, config) for config in CONFIGS]
        assert len(set(urls)) == len(CONFIGS)
        assert not any("{" in url or "}" in url for url in urls)

    def test_archive_members_are_named_as_in_the_official_archives(self):
        specs = resolve.releases()
        fields = resolve._placeholders(model_for(0.5, 160))
        assert specs["2018_02_22"]["member"].format(**fields) == "mobilenet_v1_0.5_160.tflite"
        assert specs["2018_08_02_quant"]["member"].format(**fields) == "mobilenet_v1_0.5_160_quant.tflite"
        assert "member" not in specs["keras"]
