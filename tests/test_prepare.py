"""``python -m stages.data prepare``: downloads from a local server (Range, faults on purpose), checksums,
manual files, mirrors, the atomic arrange, and the ImageNet train/val re-layout from fake official archives.

The archives (tests/fake_archives.py) are shaped like the real ones (same names, nesting and metadata
files; a few 8x8 images). Their checksums are computed here and given to a test route that keeps the real route's arrange; the
manifest is a test one with the fake's counts (the shipped routes and manifests are left as they are).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import fake_archives
import fakes
from data_server import DataServer
from stages.data import manifest as manifest_module
from stages.data.archives import extract_tar
from stages.data import routes as routes_module
from stages.data.prepare import DOWNLOADS, gather_files, git_blob_sha1, load_routes, mirror_url, prepare
from stages.data.routes import PrepareRoute, RemoteFile
from stages.data.source import DatasetError, build_dataset

IN_R_PATH = "/~hendrycks/imagenet-r.tar"


def write_manifest(folder: Path, dataset: str, splits: dict[str, tuple[int, int, int | None]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}.json").write_text(json.dumps({
        "dataset": dataset, "version": "test", "source": "a fake archive built by the test",
        "splits": {split: {"images": n, "classes": c, "per_class": p} for split, (n, c, p) in splits.items()}}))


@pytest.fixture
def fake_in_r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, PrepareRoute]:
    """imagenet-r.tar shaped like the release (imagenet-r/README.txt, imagenet-r/<wnid>/*.jpg; 3 classes x 2),
    its route (the real arrange, this archive's sha256) and a manifest with its counts."""
    data = fake_archives.imagenet_r(tmp_path / "source")["imagenet-r.tar"].read_bytes()
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    write_manifest(tmp_path / "manifests", "imagenet-r", {"test": (6, 3, 2)})
    real = load_routes()["imagenet-r"]
    file = replace(real.files[0], sha256=hashlib.sha256(data).hexdigest(), md5=None, size=len(data))
    return data, replace(real, files=(file,))


def served(route: PrepareRoute, server: DataServer) -> PrepareRoute:
    """`route` with its file's URL on the local server (same path)."""
    file = route.files[0]
    return replace(route, files=(replace(file, url=mirror_url(file.url, file.name, server.url)),))


def test_full_prepare_then_a_rerun_is_a_no_op(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute]) -> None:
    data, route = fake_in_r
    root = tmp_path / "data"
    with DataServer({IN_R_PATH: data}) as server:
        message = prepare("imagenet-r", root, route=served(route, server), progress=False)
        assert "prepared under" in message and "6 images" in message
        source = build_dataset("imagenet-r", root, "test")
        assert len(source) == 6 and len(set(source.labels)) == 3
        assert (root / "imagenet-r" / "README.txt").is_file()
        assert not list(root.glob(".imagenet-r.preparing"))  # the staging folder was renamed into place
        again = prepare("imagenet-r", root, route=served(route, server), progress=False)
        assert "already prepared" in again and "nothing to do" in again
        assert server.gets(IN_R_PATH) == [None]  # fetched once, never again


def test_interrupted_download_resumes_with_range(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute]) -> None:
    data, route = fake_in_r
    root = tmp_path / "data"
    with DataServer({IN_R_PATH: data}) as server:
        server.cut_once.add(IN_R_PATH)
        prepare("imagenet-r", root, route=served(route, server), progress=False)
        ranges = server.gets(IN_R_PATH)
        assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert (root / DOWNLOADS / "imagenet-r.tar").read_bytes() == data


def test_a_killed_download_resumes_from_its_part_file(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute]) -> None:
    data, route = fake_in_r
    root = tmp_path / "data"
    (root / DOWNLOADS).mkdir(parents=True)
    (root / DOWNLOADS / "imagenet-r.tar.part").write_bytes(data[:1000])  # what a killed process leaves
    with DataServer({IN_R_PATH: data}) as server:
        prepare("imagenet-r", root, route=served(route, server), progress=False)
        assert server.gets(IN_R_PATH) == ["bytes=1000-"]
    assert len(build_dataset("imagenet-r", root, "test")) == 6


def test_checksum_mismatch_is_fetched_again_once(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data, route = fake_in_r
    root = tmp_path / "data"
    with DataServer({IN_R_PATH: data}) as server:
        server.corrupt_once.add(IN_R_PATH)
        prepare("imagenet-r", root, route=served(route, server), progress=False)
        assert len(server.gets(IN_R_PATH)) == 2
    err = capsys.readouterr().err
    assert "imagenet-r.tar: sha256" in err and "fetching it again once" in err
    assert len(build_dataset("imagenet-r", root, "test")) == 6


def test_checksum_mismatch_twice_fails_naming_the_file(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute]) -> None:
    data, route = fake_in_r
    bad = replace(route, files=(replace(route.files[0], sha256="0" * 64),))
    with DataServer({IN_R_PATH: data}) as server, pytest.raises(DatasetError) as error:
        prepare("imagenet-r", tmp_path / "data", route=served(bad, server), progress=False)
    message = str(error.value)
    assert "imagenet-r.tar" in message and "fetched twice" in message and "0" * 64 in message
    assert not (tmp_path / "data" / "imagenet-r").exists()


def test_mirror_replaces_the_host_and_keeps_the_path(tmp_path: Path, fake_in_r: tuple[bytes, PrepareRoute],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data, route = fake_in_r  # the route's URL is the official people.eecs.berkeley.edu one
    assert route.files[0].url == "https://people.eecs.berkeley.edu" + IN_R_PATH
    with DataServer({"/datasets" + IN_R_PATH: data}) as server:
        prepare("imagenet-r", tmp_path / "a", mirror=server.url + "/datasets", route=route, progress=False)
        monkeypatch.setenv("STAGES_DATA_MIRROR", server.url + "/datasets")
        prepare("imagenet-r", tmp_path / "b", route=route, progress=False)
        assert server.gets("/datasets" + IN_R_PATH) == [None, None]
    assert mirror_url("https://drive.google.com/open?id=X", "ImageNet-Sketch.zip", "http://m") == \
        "http://m/ImageNet-Sketch.zip"


def test_manual_files_missing_are_all_named_at_once(tmp_path: Path) -> None:
    downloads = tmp_path / "mine"
    downloads.mkdir()
    with pytest.raises(DatasetError) as error:
        prepare("imagenet", tmp_path / "data", from_dir=downloads, progress=False)
    message = str(error.value)
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        assert name in message
    assert "image-net.org" in message and str(downloads) in message and "--from" in message


def test_archive_path_traversal_is_refused(tmp_path: Path) -> None:
    for name in ("../evil.txt", "/etc/evil.txt", "imagenet-r/../../evil.txt"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        buffer.seek(0)
        with pytest.raises(DatasetError, match="absolute path or '..'"):
            extract_tar(buffer, tmp_path / "out", label="evil.tar")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("imagenet-r/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    buffer.seek(0)
    with pytest.raises(DatasetError, match="links outside"):
        extract_tar(buffer, tmp_path / "out", strip="imagenet-r", label="evil.tar")
    assert not (tmp_path / "evil.txt").exists()


def test_imagenet_train_and_val_relayout_from_the_official_archives(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    archives = tmp_path / "downloads"
    fake_archives.imagenet(archives)
    wnids = fakes.imagenet_wnids()
    train_wnids = [wnids[c] for c in fake_archives.IMAGENET_TRAIN_CLASSES]
    val_wnids = [wnids[c] for c in fake_archives.IMAGENET_VAL_CLASSES]
    real = load_routes()["imagenet"]
    files = tuple(replace(file, md5=hashlib.md5((archives / file.name).read_bytes()).hexdigest())
                  for file in real.files)
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    write_manifest(tmp_path / "manifests", "imagenet", {"train": (6, 3, None), "val": (4, 3, None)})
    root = tmp_path / "data"
    message = prepare("imagenet", root, from_dir=archives, route=replace(real, files=files), progress=False)
    assert "train 6 images" in message and "val 4 images" in message
    val = root / "imagenet" / "val"
    assert sorted(p.relative_to(val).as_posix() for p in val.rglob("*.JPEG")) == sorted(
        f"{wnid}/ILSVRC2012_val_{n:08d}.JPEG" for n, wnid in enumerate(val_wnids, start=1))
    train = root / "imagenet" / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(train_wnids)
    assert len(list((train / train_wnids[2]).glob("*.JPEG"))) == 3
    source = build_dataset("imagenet", root, "val")
    assert sorted(source.labels) == sorted(fakes.imagenet_wnids().index(wnid) for wnid in val_wnids)
    assert not list(archives.glob("*.part"))  # --from files are used in place, not copied
    # A rerun is a no-op and does not re-hash the 138 GB tar (the .verified stamps say it was checked).
    assert (archives / "ILSVRC2012_img_train.tar.verified").is_file()
    assert "nothing to do" in prepare("imagenet", root, from_dir=archives, route=replace(real, files=files),
                                      progress=False)


def test_cli_prepare_and_error_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stages.data.__main__ import main

    assert main(["prepare", "--dataset", "imagenet", "--data-root", str(tmp_path), "--from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: imagenet: 3 file(s) must be downloaded by hand") and "Traceback" not in err
    assert main(["prepare", "--dataset", "no-such-set", "--data-root", str(tmp_path)]) == 2
    assert "no prepare route for dataset 'no-such-set'" in capsys.readouterr().err


def test_shipped_routes_record_published_checksums() -> None:
    routes = load_routes()
    md5 = {file.name: file.md5 for route in routes.values() for file in route.files}
    assert md5["ILSVRC2012_img_train.tar"] == "1d675b47d978889d74fa0da5fadfb00e"
    assert md5["ILSVRC2012_img_val.tar"] == "29b22e2961454d5413ddabcf34fc5622"
    assert md5["ILSVRC2012_devkit_t12.tar.gz"] == "fa75699e90414af021442c21a62c3abf"
    assert md5["imagenet-r.tar"] == "a61312130a589d0ca1a8fca1f2bd3337"
    assert md5["imagenet-a.tar"] == "c3e55429088dc681f30d81f4726b6595"
    assert all(isinstance(route, PrepareRoute) and all(isinstance(f, RemoteFile) for f in route.files)
               for route in routes.values())


def test_a_file_pinned_by_its_git_blob_id_is_checked(tmp_path: Path) -> None:
    """A file whose only checksum is ``git_sha1`` (e.g. CIFAR-10.2's npz) is checked like a sha256: the right
    id passes, a wrong one is fetched again once and then refused, naming both ids."""
    data = b"images and labels\n" * 100
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    right = git_blob_sha1(path)
    assert right == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    with DataServer({"/repo/raw/abc/blob.bin": data}) as server:
        file = RemoteFile("blob.bin", server.url + "/repo/raw/abc/blob.bin", git_sha1=right)
        route = PrepareRoute(dataset="pinned", files=(file,), arrange=lambda files, target: None, folder="pinned")
        assert gather_files(route, tmp_path / "good", progress=False)["blob.bin"].read_bytes() == data
        wrong = replace(route, files=(replace(file, git_sha1="0" * 40),))
        with pytest.raises(DatasetError) as error:
            gather_files(wrong, tmp_path / "bad", progress=False)
        assert server.gets("/repo/raw/abc/blob.bin") == [None, None, None]
    message = str(error.value)
    assert "blob.bin: git_sha1 " + right in message and "0" * 40 in message and "fetched twice" in message


def test_cifar10_02_prepares_cifar10_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cifar10.02's adapter reads cifar10's test_batch: preparing cifar10.02 prepares cifar10 first (its own
    verify, in the staging folder, reads it there)."""
    routes = load_routes()
    files = {**fake_archives.cifar10(tmp_path / "fakes" / "cifar10"), **fake_archives.cifar102(tmp_path / "fakes" / "102")}
    served = {}
    for name in ("cifar10", "cifar10.02"):  # the real routes, with the fakes' checksums
        (file,) = routes[name].files
        served[urlsplit(file.url).path] = files[file.name].read_bytes()
        checked = replace(file, md5=None, sha256=hashlib.sha256(served[urlsplit(file.url).path]).hexdigest(),
                          size=None, git_sha1=None)
        monkeypatch.setitem(routes_module._ROUTES, name, replace(routes[name], files=(checked,)))
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    write_manifest(tmp_path / "manifests", "cifar10", {"train": (50, 10, 5), "test": (10, 10, 1)})
    write_manifest(tmp_path / "manifests", "cifar10.02", {"test": (30, 10, 3)})
    root = tmp_path / "data"
    assert routes["cifar10.02"].requires == ("cifar10",)
    with DataServer(served) as server:
        lines = prepare("cifar10.02", root, mirror=server.url, progress=False).splitlines()
    assert lines[0].startswith("cifar10: prepared under") and lines[1].startswith("cifar10.02: prepared under")
    assert len(build_dataset("cifar10.02", root, "test")) == 30
    assert sorted(path.name for path in root.iterdir()) == [DOWNLOADS, "CIFAR-10.2", "cifar-10-batches-py"]
