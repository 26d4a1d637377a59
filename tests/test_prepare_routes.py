"""Every dataset's prepare route on a fake of its official archive, the safe-extract helper, manifests and checksums.

Each route's ``arrange`` runs on an archive shaped like the real one (tests/fake_archives.py), and
the dataset's adapter must then read every split from the result. Downloads are the prepare
command's tests; here the files are already on disk.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fake_archives
import stages.data  # noqa: F401  (registers every adapter)
from stages.data import prepare_routes as prepare_routes_package
from stages.data.manifest import load_manifest
from stages.data.prepare import git_blob_sha1
from stages.data.prepare_routes import prepare_routes
from stages.data.archives import extract_tar, extract_zip, member_path
from stages.data.source import DatasetError, build_dataset, dataset_layouts

ROUTES = prepare_routes()
# Adapter splits the manifests leave out on purpose, with the reason (also in the route's note and the report).
UNCOUNTED = {("caltech101", split): "FLYP's split CSVs publish no counts" for split in ("train", "val", "test")}


def adapter_splits(name: str, root: Path) -> list[str]:
    """The splits the dataset's adapter takes, from its own error for an unknown split."""
    with pytest.raises(DatasetError, match="available: ") as error:
        build_dataset(name, root, "no-such-split")
    return re.search(r"available: (.*)$", str(error.value)).group(1).split(", ")


def prepare(name: str, downloads: Path, root: Path) -> Path:
    """Build the fake archive of `name`, run its route's arrange into ``root/<folder>``; return that folder."""
    route = ROUTES[name]
    for required in route.requires:  # datasets whose folders its adapter also reads
        prepare(required, downloads / required, root)
    files = fake_archives.BUILDERS[name](downloads / name)
    assert set(files) == {remote.name for remote in route.files}, "the fake must provide every published file"
    target = root / route.folder
    route.arrange(files, target)
    return target


def test_the_package_imports_every_route_module_it_finds() -> None:
    folder = Path(prepare_routes_package.__file__).parent
    modules = {path.stem for path in folder.glob("*.py") if not path.stem.startswith("_")}
    assert modules >= {"cifar", "transfer", "group_shift", "wilds"}
    assert {f"stages.data.prepare_routes.{module}" for module in modules} <= set(sys.modules)
    assert set(fake_archives.BUILDERS) <= set(ROUTES)


@pytest.mark.parametrize("name", sorted(fake_archives.BUILDERS))
def test_arranged_fake_release_is_read_by_the_adapter_in_every_split(name: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    target = prepare(name, tmp_path / "downloads", root)
    route = ROUTES[name]
    assert route.folder == dataset_layouts()[name].folders[0], "prepare must write the folder the adapter looks in first"
    assert not [p for p in target.rglob("*") if p.name.startswith(".")], "no staging leftovers"
    for split in adapter_splits(name, root):
        source = build_dataset(name, root, split)
        assert len(source) > 0
        assert set(source.labels) <= set(range(len(source.classnames)))
        images = [ref for ref in source.images if isinstance(ref, Path)]
        assert all(path.is_file() and root in path.parents for path in images)


def test_cifar_batches_are_extracted_byte_for_byte(tmp_path: Path) -> None:
    files = fake_archives.cifar10(tmp_path / "downloads")
    target = tmp_path / "data" / "cifar-10-batches-py"
    ROUTES["cifar10"].arrange(files, target)
    with tarfile.open(files["cifar-10-python.tar.gz"]) as bundle:
        original = bundle.extractfile("cifar-10-batches-py/test_batch").read()
    assert (target / "test_batch").read_bytes() == original
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "readme.html"])
    assert len(build_dataset("cifar10", tmp_path / "data", "train")) == 50


def test_caltech_split_folders_follow_flyps_csvs_and_share_the_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    target = prepare("caltech101", tmp_path / "downloads", root)
    assert (target / "101_ObjectCategories" / "BACKGROUND_Google").is_dir()
    test = build_dataset("caltech101", root, "test")
    assert [p.relative_to(target).as_posix() for p in test.images][:2] == [
        "test/Faces/image_0003.jpg", "test/Faces_easy/image_0003.jpg"]
    linked = test.images[0]
    assert os.stat(linked).st_ino == os.stat(target / "101_ObjectCategories" / "Faces" / "image_0003.jpg").st_ino
    everything = build_dataset("caltech101", root, "all")
    assert len(everything) == sum(len(build_dataset("caltech101", root, s)) for s in ("train", "val", "test"))


def test_caltech_refuses_a_split_csv_naming_an_image_the_archive_lacks(tmp_path: Path) -> None:
    files = fake_archives.caltech101(tmp_path / "downloads")
    with open(files["caltech101_test.csv"], "a", encoding="utf-8") as handle:
        handle.write("a photo of a yin_yang.\t/project_data/datasets/caltech-101/test/yin_yang/image_0999.jpg\n")
    with pytest.raises(DatasetError, match="did not contain.*yin_yang/image_0999.jpg"):
        ROUTES["caltech101"].arrange(files, tmp_path / "data" / "caltech-101")


@pytest.mark.parametrize("wrapper, doubled", [("stanford_cars/", False), ("", True), ("archive/stanford_cars/", False)])
def test_cars_repacks_with_other_top_folders_arrange_alike(wrapper: str, doubled: bool, tmp_path: Path) -> None:
    files = fake_archives.stanford_cars(tmp_path / "downloads", wrapper, doubled)
    target = tmp_path / "data" / "stanford_cars"
    ROUTES["stanford-cars"].arrange(files, target)
    assert sorted(p.name for p in target.iterdir()) == ["cars_test", "cars_test_annos_withlabels.mat", "cars_train", "devkit"]
    assert len(build_dataset("stanford-cars", tmp_path / "data", "test")) == 3


def test_stl10_leaves_out_the_unused_unlabeled_images(tmp_path: Path) -> None:
    target = prepare("stl10", tmp_path / "downloads", tmp_path / "data")
    assert not (target / "unlabeled_X.bin").exists() and (target / "fold_indices.txt").is_file()


def test_a_metadata_row_without_its_image_is_an_incomplete_download(tmp_path: Path) -> None:
    files = fake_archives.waterbirds(tmp_path / "downloads")
    archive = files["waterbird_complete95_forest2water2.tar.gz"]
    with tarfile.open(archive) as bundle:
        members = [(m, bundle.extractfile(m).read() if m.isfile() else None) for m in bundle.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(archive, "w:gz") as bundle:
        for member, data in members:
            if member.name != dropped:
                bundle.addfile(member, None if data is None else io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"names 1 of 24 images that the archive did not contain"):
        ROUTES["waterbirds"].arrange(files, tmp_path / "data" / "waterbird_complete95_forest2water2")


def test_a_truncated_or_corrupted_gzip_fails_to_extract(tmp_path: Path) -> None:
    files = fake_archives.iwildcam(tmp_path / "downloads")
    archive = files["iwildcam_v2.0.tar.gz"]
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="not a complete, readable tar"):
        ROUTES["iwildcam"].arrange(files, tmp_path / "data" / "a")
    # A flipped byte in the CRC-32 trailer: every member is intact, only the whole-stream check catches it.
    archive.write_bytes(data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:])
    with pytest.raises(DatasetError, match="not a complete, readable tar"):
        ROUTES["iwildcam"].arrange(files, tmp_path / "data" / "b")


def test_cifar102_reads_only_the_arrays_and_refuses_a_wrong_shape(tmp_path: Path) -> None:
    import numpy as np

    files = fake_archives.cifar102(tmp_path / "downloads")
    bad = tmp_path / "bad" / "cifar102_test.npz"
    bad.parent.mkdir()
    np.savez(bad, images=np.zeros((2, 32, 32), dtype=np.uint8), labels=np.zeros(2, dtype=np.int64))
    with pytest.raises(DatasetError, match=r"expected uint8 \[N, 32, 32, 3\]"):
        ROUTES["cifar10.02"].arrange({"cifar102_test.npz": bad}, tmp_path / "data" / "CIFAR-10.2")
    ROUTES["cifar10.02"].arrange(files, tmp_path / "data" / "CIFAR-10.2")  # its object-array 'keywords' is never unpickled
    assert (tmp_path / "data" / "CIFAR-10.2" / "cifar102_test.npz").read_bytes() == files["cifar102_test.npz"].read_bytes()


# ------------------------------------------------------------------------------------------------ safe extraction

@pytest.mark.parametrize("members, why", [
    ([fake_archives.tar_member("../evil")], "'..'"),
    ([fake_archives.tar_member("ok/../../evil")], "'..'"),
    ([fake_archives.tar_member("/tmp/evil")], "absolute path"),
    ([fake_archives.tar_member("link", tarfile.SYMTYPE, "../../outside")], "links outside"),
    ([fake_archives.tar_member("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute path"),
    ([fake_archives.tar_member("hard", tarfile.LNKTYPE, "../outside")], "'..'"),
    ([fake_archives.tar_member("up", tarfile.SYMTYPE, "."), fake_archives.tar_member("up/x", tarfile.SYMTYPE, "..")],
     "links outside"),
    ([fake_archives.tar_member("parent", tarfile.SYMTYPE, "sub/.."), fake_archives.tar_member("sub", tarfile.DIRTYPE),
      fake_archives.tar_member("deep/a", tarfile.SYMTYPE, "../../..")], "links outside"),
    ([fake_archives.tar_member("dev", tarfile.CHRTYPE)], "special file"),
    ([fake_archives.tar_member("fifo", tarfile.FIFOTYPE)], "special file"),
])
def test_tar_members_escaping_the_target_refuse_the_archive(members: list[tarfile.TarInfo], why: str, tmp_path: Path) -> None:
    archive = fake_archives.hostile_tar(tmp_path / "hostile.tar.gz", members)
    target = tmp_path / "sandbox" / "target"
    with pytest.raises(DatasetError, match=re.escape(why)) as error:
        extract_tar(archive, target)
    assert "hostile.tar.gz" in str(error.value) and "download it again" in str(error.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sandbox" / "evil").exists()


def test_a_member_written_through_an_extracted_link_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # 'out' -> the target's parent folder is refused at once; a link to a sibling folder created
    # outside the archive (already on disk) must not be written through either.
    (tmp_path / "target").mkdir()
    os.symlink(outside, tmp_path / "target" / "escape")
    archive = fake_archives.hostile_tar(tmp_path / "through.tar.gz", [fake_archives.tar_member("escape/x")])
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        extract_tar(archive, tmp_path / "target")
    assert not (outside / "x").exists()


def test_links_inside_the_target_are_kept(tmp_path: Path) -> None:
    archive = fake_archives.hostile_tar(tmp_path / "fine.tar.gz", [
        fake_archives.tar_member("sub/file"), fake_archives.tar_member("alias", tarfile.SYMTYPE, "sub/file"),
        fake_archives.tar_member("sub/hard", tarfile.LNKTYPE, "sub/file")])
    assert extract_tar(archive, tmp_path / "t") == 2
    assert (tmp_path / "t" / "alias").read_bytes() == b"evil" and os.readlink(tmp_path / "t" / "alias") == "sub/file"


@pytest.mark.parametrize("name, why", [("../evil", "'..'"), ("/abs/evil", "absolute path"), ("C:/evil", "absolute path"),
                                       ("a\\..\\..\\evil", "'..'")])
def test_zip_members_escaping_the_target_refuse_the_archive(name: str, why: str, tmp_path: Path) -> None:
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fine.txt", b"ok")
        bundle.writestr(name, b"evil")
    with pytest.raises(DatasetError, match=re.escape(why)):
        extract_zip(archive, tmp_path / "t")
    assert not (tmp_path / "evil").exists()


def test_zip_symlink_escaping_the_target_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(info, "../../outside")
    with pytest.raises(DatasetError, match="links outside"):
        extract_zip(archive, tmp_path / "t")


def test_member_path_strips_an_optional_top_folder() -> None:
    assert member_path("a.tar", "./iwildcam_v2.0/metadata.csv", "iwildcam_v2.0") == "metadata.csv"
    assert member_path("a.tar", "metadata.csv", "iwildcam_v2.0") == "metadata.csv"
    assert member_path("a.tar", "iwildcam_v2.0/", "iwildcam_v2.0") is None and member_path("a.tar", "./") is None


# ------------------------------------------------------------------------------------------------ manifests, checksums

@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_route_has_a_manifest_for_every_split_its_adapter_reads(name: str, tmp_path: Path) -> None:
    manifest = load_manifest(name)
    assert manifest is not None and manifest.source
    expected = {split for split in adapter_splits(name, tmp_path) if (name, split) not in UNCOUNTED}
    assert set(manifest.splits) == expected
    assert all(counts.images > 0 and (counts.classes is None or counts.classes > 0) for counts in manifest.splits.values())


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_file_has_a_checksum_or_the_documented_rule_or_a_manual_step(name: str) -> None:
    route = ROUTES[name]
    for remote in route.files:
        assert remote.url.startswith("https://") or remote.url.startswith("http://ai.stanford.edu/")
        if remote.manual:
            assert remote.name in remote.manual and "--from DIR" in remote.manual and "http" in remote.manual
        elif not (remote.md5 or remote.sha256 or remote.git_sha1):
            assert "no checksum" in route.note.lower(), f"{remote.name}: no checksum and the route's note does not say so"
        for digest, length in ((remote.md5, 32), (remote.sha256, 64), (remote.git_sha1, 40)):
            assert digest is None or re.fullmatch(f"[0-9a-f]{{{length}}}", digest)
    assert len({remote.name for remote in route.files}) == len(route.files)


def test_git_blob_id_is_what_git_hash_object_prints(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 5)
    printed = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert git_blob_sha1(path) == printed


def test_a_corrupted_gzip_inside_a_zip_is_named(tmp_path: Path) -> None:
    files = fake_archives.caltech101(tmp_path / "downloads")
    rebuilt = tmp_path / "rebuilt.zip"
    with zipfile.ZipFile(files["caltech-101.zip"]) as source, zipfile.ZipFile(rebuilt, "w") as bundle:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("101_ObjectCategories.tar.gz"):
                data = gzip.compress(b"not a tar at all" * 40)
            bundle.writestr(info, data)
    with pytest.raises(DatasetError, match="101_ObjectCategories.tar.gz: not a complete, readable tar"):
        ROUTES["caltech101"].arrange({**files, "caltech-101.zip": rebuilt}, tmp_path / "data" / "caltech-101")
