"""Prepare routes of the ImageNet family: ImageNet (ILSVRC-2012), IN-V2, IN-R, IN-A, IN-Sketch.

Each arranges its release into exactly the layout its adapter reads (``stages.data.imagenet``).
Checksums are the published ones: ImageNet's md5s are those torchvision and the ILSVRC download page
list; IN-R's and IN-A's md5s those of their torchvision-style loaders, and their sha256 and sizes (as
IN-V2's and IN-Sketch's) those TensorFlow Datasets records for the same URLs.

- ``imagenet`` (licence: the user downloads the three archives from image-net.org and passes
  ``--from DIR``): train/<wnid>/ is written straight from the train tar, a tar of 1,000 per-class
  tars, each streamed once; val/<wnid>/ from the flat val tar, sorted with the devkit's
  ``data/ILSVRC2012_validation_ground_truth.txt`` (line n = the ILSVRC2012_ID of image n) and
  ``meta.mat`` (ID -> wnid, read by scipy.io.loadmat). The devkit stays in imagenet/ as provenance.
- ``imagenet-r``, ``imagenet-a``: public tars, top folder kept as it is.
- ``imagenetv2``: the matched-frequency tar from the Hugging Face copy; its top folder
  ``imagenetv2-matched-frequency-format-val`` becomes ``ImageNetV2-matched-frequency``.
- ``imagenet-sketch``: ``ImageNet-Sketch.zip`` is on Google Drive only (a browser step), then the
  zip's ``sketch/`` is arranged as ``sketch/``. The README says 50 images per class, 50,000 in all;
  the archive holds 50,889 (some classes have more), which is what the manifest records.
"""

from __future__ import annotations

from pathlib import Path

from stages.data.archives import extract_tar, extract_zip, member_path, open_tar
from stages.data.imagenet import DEVKIT_DATA, IMAGENET, _val_wnids_from_devkit, imagenet_classes
from stages.data.routes import ArrangeFn, PrepareRoute, RemoteFile, register_route
from stages.data.source import DatasetError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
_IMAGENET_URL = "https://image-net.org/data/ILSVRC/2012/"
_IMAGENET_MANUAL = ("log in at https://image-net.org (ILSVRC 2012, accept the terms of access) and download it "
                    "from " + _IMAGENET_URL + "{}, put the three archives in a folder DIR and pass --from DIR; Kaggle's "
                    "imagenet-object-localization-challenge is a different archive and is not accepted here")
_HENDRYCKS = "https://people.eecs.berkeley.edu/~hendrycks/"


def _devkit(files: dict[str, Path], target: Path) -> dict[str, str]:
    """Extract the devkit into `target` (it is small) and read val's image id -> wnid from it."""
    extract_tar(files[DEVKIT_TAR], target)
    truth = target / DEVKIT_DATA / "ILSVRC2012_validation_ground_truth.txt"
    if not truth.is_file():
        raise DatasetError(f"{files[DEVKIT_TAR]}: no {DEVKIT_DATA}/{truth.name} inside; this is not the official "
                           "devkit: download ILSVRC2012_devkit_t12.tar.gz again")
    count = len(truth.read_text().split())
    image_ids = [f"ILSVRC2012_val_{number:08d}" for number in range(1, count + 1)]
    return _val_wnids_from_devkit(target / DEVKIT_DATA, target.parent, image_ids)


def _train(archive: Path, target: Path) -> None:
    """train/<wnid>/ from the tar of per-class tars, each inner tar streamed straight into its folder
    (a missing class shows in the manifest check that follows)."""
    from tqdm import tqdm

    wnids = set(imagenet_classes()[0])
    with open_tar(archive) as outer, tqdm(total=len(wnids), desc="imagenet train classes", unit="class") as bar:
        for member in outer:
            name = member_path(str(archive), member.name)
            if name is None or member.isdir():
                continue
            wnid = name[:-len(".tar")] if name.endswith(".tar") else None
            if not member.isfile() or wnid not in wnids:
                raise DatasetError(f"{archive}: member {member.name!r} is not one of the 1,000 <wnid>.tar class "
                                   "archives of the official train tar; download ILSVRC2012_img_train.tar again")
            inner = outer.extractfile(member)
            assert inner is not None  # a regular member
            extract_tar(inner, target / "train" / wnid, label=f"{archive}:{member.name}")
            bar.update(1)


def _val(archive: Path, target: Path, wnid_of: dict[str, str]) -> None:
    """val/<wnid>/ from the flat val tar, each image written once into its class folder."""

    def destination(relative: str) -> str:
        image_id = relative.rsplit(".", 1)[0]
        if "/" in relative or image_id not in wnid_of:
            raise DatasetError(f"{archive}: member {relative!r} is not an ILSVRC2012 val image the devkit labels; "
                               "download ILSVRC2012_img_val.tar again")
        return f"val/{wnid_of[image_id]}/{relative}"

    extract_tar(archive, target, rename=destination)


def arrange_imagenet(files: dict[str, Path], target: Path) -> None:
    """``imagenet/{train,val}/<wnid>/`` (+ the devkit) from the three official archives."""
    wnid_of = _devkit(files, target)
    _val(files[VAL_TAR], target, wnid_of)
    _train(files[TRAIN_TAR], target)


def _strip_tar(top: str) -> ArrangeFn:
    """An arrange that extracts the route's one tar, its top folder `top` becoming the target."""

    def arrange(files: dict[str, Path], target: Path) -> None:
        (archive,) = files.values()
        extract_tar(archive, target, strip=top)

    return arrange


def _hendrycks(dataset: str, md5: str, sha256: str, size: int) -> PrepareRoute:
    """The route of ``<dataset>.tar`` from Hendrycks' page, whose top folder ``<dataset>/`` is the dataset's folder."""
    name = f"{dataset}.tar"
    return PrepareRoute(dataset=dataset, folder=dataset, arrange=_strip_tar(dataset),
                        files=(RemoteFile(name, _HENDRYCKS + name, md5=md5, sha256=sha256, size=size),))


def arrange_sketch(files: dict[str, Path], target: Path) -> None:
    """``sketch/<wnid>/*.JPEG`` from ImageNet-Sketch.zip's ``sketch/``."""
    extract_zip(files["ImageNet-Sketch.zip"], target, strip="sketch")


register_route(PrepareRoute(
    dataset="imagenet",
    folder=IMAGENET.folders[0],
    files=(
        RemoteFile(DEVKIT_TAR, _IMAGENET_URL + DEVKIT_TAR, md5="fa75699e90414af021442c21a62c3abf",
                   manual=_IMAGENET_MANUAL.format(DEVKIT_TAR)),
        RemoteFile(VAL_TAR, _IMAGENET_URL + VAL_TAR, md5="29b22e2961454d5413ddabcf34fc5622",
                   manual=_IMAGENET_MANUAL.format(VAL_TAR)),
        RemoteFile(TRAIN_TAR, _IMAGENET_URL + TRAIN_TAR, md5="1d675b47d978889d74fa0da5fadfb00e",
                   manual=_IMAGENET_MANUAL.format(TRAIN_TAR)),
    ),
    arrange=arrange_imagenet,
    note="ImageNet's licence allows no automatic download: pass the folder holding the three archives as --from DIR "
         "(about 147 GB; the arranged copy needs as much again).",
))
register_route(_hendrycks("imagenet-r", md5="a61312130a589d0ca1a8fca1f2bd3337",
                          sha256="18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52", size=2191079936))
register_route(_hendrycks("imagenet-a", md5="c3e55429088dc681f30d81f4726b6595",
                          sha256="3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e", size=687552512))
register_route(PrepareRoute(
    dataset="imagenetv2",
    folder="ImageNetV2-matched-frequency",
    files=(RemoteFile("imagenetv2-matched-frequency.tar.gz",
                      "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                      "imagenetv2-matched-frequency.tar.gz",
                      sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c", size=1264079360),),
    arrange=_strip_tar("imagenetv2-matched-frequency-format-val"),
))
register_route(PrepareRoute(
    dataset="imagenet-sketch",
    folder="sketch",
    files=(RemoteFile("ImageNet-Sketch.zip", "https://drive.google.com/open?id=1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA",
                      sha256="4d3ce6b82a7c48aabf14aeac105eb533e75707f152cc858f55bfc022031a72ed", size=7593573012,
                      manual="open https://drive.google.com/open?id=1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA "
                             "(github.com/HaohanWang/ImageNet-Sketch) in a browser and download ImageNet-Sketch.zip "
                             "(7.6 GB; Google Drive asks to confirm large files, which scripts cannot do), put it in a "
                             "folder DIR and pass --from DIR"),),
    arrange=arrange_sketch,
))
