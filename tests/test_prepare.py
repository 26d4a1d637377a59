"""``python -m stages.data prepare``: downloads from a local server (Range, faults on purpose), checksums,
manual files, mirrors, the atomic arrange, and the ImageNet train/val re-layout from fake official archives.

The archives are shaped like the real ones (same names, nesting and metadata files; a few 8x8 images).
Their checksums are computed here and given to a test route that keeps the real route's arrange; the
manifest is a test one with the fake's counts (the shipped routes and manifests are left as they are).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

import fakes
from data_server import DataServer
from stages.data import manifest as manifest_module
from stages.data.archives import extract_tar
from stages.data.prepare import DOWNLOADS, load_routes, mirror_url, prepare
from stages.data.routes import PrepareRoute, RemoteFile
from stages.data.source import DatasetError, build_dataset

IN_R_PATH = "/~hendrycks/imagenet-r.tar"


def tar_of(folder: Path, arcname: str | None = None, gz: bool = False) -> bytes:
    """The bytes of a tar of `folder` (stored as `arcname`, default its name), members sorted."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        tar.add(folder, arcname=arcname or folder.name, recursive=False)
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"{arcname or folder.name}/{path.relative_to(folder).as_posix()}", recursive=False)
    return buffer.getvalue()


def flat_tar(files: list[Path], gz: bool = False) -> bytes:
    """A tar whose members are `files` at its top level (as ILSVRC2012_img_val.tar and the train tar)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def write_manifest(folder: Path, dataset: str, splits: dict[str, tuple[int, int, int | None]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}.json").write_text(json.dumps({
        "dataset": dataset, "version": "test", "source": "a fake archive built by the test",
        "splits": {split: {"images": n, "classes": c, "per_class": p} for split, (n, c, p) in splits.items()}}))


@pytest.fixture
def fake_in_r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, PrepareRoute]:
    """imagenet-r.tar shaped like the release (imagenet-r/README.txt, imagenet-r/<wnid>/*.jpg; 3 classes x 2),
    its route (the real arrange, this archive's sha256) and a manifest with its counts."""
    source = tmp_path / "source"
    wnids = fakes.imagenet_subset(source, "imagenet-r", [0, 5, 9])
    for wnid in wnids:
        fakes.image(source / "imagenet-r" / wnid / "second.jpg", 3)
    # The release's README is small; this one is long enough (300 kB) that a dropped connection falls
    # after the first chunks the client has written, as it does in a 2 GB download.
    (source / "imagenet-r" / "README.txt").write_text("ImageNet-R (fake)\n" * 17_000)
    data = tar_of(source / "imagenet-r")
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
            extract_tar(buffer, tmp_path / "out", name="evil.tar")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("imagenet-r/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    buffer.seek(0)
    with pytest.raises(DatasetError, match="links outside"):
        extract_tar(buffer, tmp_path / "out", strip="imagenet-r", name="evil.tar")
    assert not (tmp_path / "evil.txt").exists()


def fake_imagenet_archives(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """The three ILSVRC-2012 archives, shaped like the real ones, in one folder (as the user downloads them):
    the devkit (ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}), the flat val
    tar and the train tar of per-class <wnid>.tar archives. Returns (folder, train wnids, val wnid per image)."""
    wnids = fakes.imagenet_wnids()
    val_wnids = [wnids[3], wnids[7], wnids[3], wnids[500]]
    work = tmp_path / "work"
    fakes.imagenet_unsorted_val(work, val_wnids, labels="devkit")  # devkit + flat val, as the archives hold them
    out = tmp_path / "downloads"
    out.mkdir()
    devkit = work / "imagenet" / "ILSVRC2012_devkit_t12"
    (devkit / "evaluation").mkdir()
    (devkit / "readme.txt").write_text("ILSVRC2012 devkit (fake)\n")
    (out / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_of(devkit, gz=True))
    (out / "ILSVRC2012_img_val.tar").write_bytes(flat_tar(sorted((work / "imagenet" / "val").glob("*.JPEG"))))
    train_wnids = [wnids[3], wnids[7], wnids[999]]
    inner = []
    for index, wnid in enumerate(train_wnids):
        images = [fakes.image(work / "train" / wnid / f"{wnid}_{n}.JPEG", index + n) for n in range(1 + index)]
        (work / "inner").mkdir(exist_ok=True)
        (work / "inner" / f"{wnid}.tar").write_bytes(flat_tar(images))
        inner.append(work / "inner" / f"{wnid}.tar")
    (out / "ILSVRC2012_img_train.tar").write_bytes(flat_tar(inner))
    return out, train_wnids, val_wnids


def test_imagenet_train_and_val_relayout_from_the_official_archives(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    archives, train_wnids, val_wnids = fake_imagenet_archives(tmp_path)
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
    for route in routes.values():
        for file in route.files:
            assert file.sha256 or file.md5 or file.manual, file.name
    assert all(isinstance(route, PrepareRoute) and all(isinstance(f, RemoteFile) for f in route.files)
               for route in routes.values())
