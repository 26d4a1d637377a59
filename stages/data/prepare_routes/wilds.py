"""Prepare routes of WILDS iWildCam v2.0 and FMoW v1.1, from the archives ``wilds.get_dataset(download=True)`` fetches.

URLs and compressed sizes are WILDS' ``_versions_dict`` (p-lambda/wilds @ 4726775,
``wilds/datasets/{iwildcam,fmow}_dataset.py``). WILDS publishes no checksum, so the rule of
``_checks`` applies: the published size, the gzip CRC at the end of the stream, the release
marker ``RELEASE_v<version>.txt``, and every image the metadata CSV names being in the archive.
The archives hold the release's files at their top level (WILDS extracts them straight into
``<name>_v<version>/``); a top folder of that name is accepted too.
"""

from __future__ import annotations

from pathlib import Path

from stages.data.layout import read_csv
from stages.data.archives import extract_tar
from stages.data.prepare_routes._checks import require_files, require_images
from stages.data.routes import PrepareRoute, RemoteFile, register_route

CODALAB = "https://worksheets.codalab.org/rest/bundles/{bundle}/contents/blob/"
IWILDCAM_FOLDER, FMOW_FOLDER = "iwildcam_v2.0", "fmow_v1.1"
IWILDCAM_FILE = RemoteFile(
    name=f"{IWILDCAM_FOLDER}.tar.gz", url=CODALAB.format(bundle="0x6313da2b204647e79a14b468131fcd64"),
    size=11_957_420_032,
)
FMOW_FILE = RemoteFile(
    name=f"{FMOW_FOLDER}.tar.gz", url=CODALAB.format(bundle="0xaec91eb7c9d548ebb15e1b5e60f966ab"),
    size=53_893_324_800,
)
UNPUBLISHED = ("WILDS publishes no checksum (wilds saves this archive as archive.tar.gz): checked by the published "
               "compressed size, the gzip CRC, {marker} and every image of {metadata} being in the archive, then by "
               "verify. The manifest's 'classes' is null: the label set has {classes} classes, and which of them each split "
               "holds is not published.")


def arrange_iwildcam(files: dict[str, Path], target: Path) -> None:
    """``iwildcam_v2.0/{metadata.csv, categories.csv, RELEASE_v2.0.txt, train/<filename>}`` (every split's images in train/)."""
    extract_tar(files[IWILDCAM_FILE.name], target, label=IWILDCAM_FILE.name, strip=IWILDCAM_FOLDER)
    require_files(target, ["RELEASE_v2.0.txt", "metadata.csv", "train"], IWILDCAM_FILE.name)
    rows = read_csv(target / "metadata.csv", ("split", "filename", "y"))
    require_images(target / "train", (row["filename"] for row in rows), target / "metadata.csv")


def arrange_fmow(files: dict[str, Path], target: Path) -> None:
    """``fmow_v1.1/{rgb_metadata.csv, country_code_mapping.csv, RELEASE_v1.1.txt, images/rgb_img_<row>.png}``.

    Images are named by their row in ``rgb_metadata.csv``; rows of split ``seq`` are not part of any
    split the adapter reads and need no image.
    """
    extract_tar(files[FMOW_FILE.name], target, label=FMOW_FILE.name, strip=FMOW_FOLDER)
    require_files(target, ["RELEASE_v1.1.txt", "rgb_metadata.csv", "country_code_mapping.csv", "images"], FMOW_FILE.name)
    rows = read_csv(target / "rgb_metadata.csv", ("split", "timestamp", "country_code", "category"))
    require_images(target / "images", (f"rgb_img_{index}.png" for index, row in enumerate(rows) if row["split"] != "seq"),
                   target / "rgb_metadata.csv")


register_route(PrepareRoute(
    dataset="iwildcam", files=(IWILDCAM_FILE,), arrange=arrange_iwildcam, folder=IWILDCAM_FOLDER,
    note=UNPUBLISHED.format(marker="RELEASE_v2.0.txt", metadata="metadata.csv", classes=182),
))
register_route(PrepareRoute(
    dataset="fmow", files=(FMOW_FILE,), arrange=arrange_fmow, folder=FMOW_FOLDER,
    note=UNPUBLISHED.format(marker="RELEASE_v1.1.txt", metadata="rgb_metadata.csv", classes=62),
))
