"""Prepare routes of the group-shift sets Waterbirds (group_DRO's tarball) and PACS (DomainBed's Google Drive zip).

Neither release publishes a checksum or a size, so the rule of ``_checks`` applies: the archive
must decompress completely (gzip / zip CRCs), and its own listing must agree with the extracted
files: every ``img_filename`` of Waterbirds' ``metadata.csv``, every domain x class folder of PACS.
``verify`` then checks the split sizes against the manifests.
"""

from __future__ import annotations

from pathlib import Path

from stages.data.layout import data_file, read_csv
from stages.data.archives import extract_tar, extract_zip
from stages.data.prepare_routes._checks import require_files, require_images
from stages.data.routes import PrepareRoute, RemoteFile, register_route

WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"
WATERBIRDS_FILE = RemoteFile(
    name=f"{WATERBIRDS_FOLDER}.tar.gz", url=f"https://nlp.stanford.edu/data/dro/{WATERBIRDS_FOLDER}.tar.gz",
)
PACS_FILE = RemoteFile(
    name="PACS.zip", url="https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd",
    manual=("PACS is only on Google Drive (DomainBed's domainbed/scripts/download.py, download_pacs). Open "
            "https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd in a browser (or run "
            "'gdown 1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd'), save PACS.zip in a folder DIR and run "
            "python -m stages.data prepare --dataset pacs --from DIR"),
)


def arrange_waterbirds(files: dict[str, Path], target: Path) -> None:
    """``waterbird_complete95_forest2water2/{metadata.csv, <NNN.Species>/<image>.jpg}`` from group_DRO's tarball."""
    extract_tar(files[WATERBIRDS_FILE.name], target, label=WATERBIRDS_FILE.name, strip=WATERBIRDS_FOLDER)
    require_files(target, ["metadata.csv"], WATERBIRDS_FILE.name)
    rows = read_csv(target / "metadata.csv", ("img_filename", "y", "split", "place"))
    require_images(target, (row["img_filename"] for row in rows), target / "metadata.csv")


def arrange_pacs(files: dict[str, Path], target: Path) -> None:
    """``PACS/{art_painting,cartoon,photo,sketch}/<class>/*`` from PACS.zip (its ``kfold/`` folder is PACS/)."""
    extract_zip(files[PACS_FILE.name], target, strip="kfold",
                rename=lambda name: None if name.startswith("__MACOSX/") else name)
    meta = data_file("classnames", "pacs")
    require_files(target, [f"{domain}/{name}" for domain in meta["domains"] for name in meta["classnames"]],
                  PACS_FILE.name)


register_route(PrepareRoute(
    dataset="waterbirds", files=(WATERBIRDS_FILE,), arrange=arrange_waterbirds, folder=WATERBIRDS_FOLDER,
    note="Waterbirds as group_DRO publishes it (github.com/kohpangwei/group_DRO; the same images as WILDS' "
         "waterbirds_v1.0). No checksum or size is published: checked by the gzip CRC and by every image of "
         "metadata.csv being in the archive, then by verify (train 4,795 / val 1,199 / test 5,794).",
))
register_route(PrepareRoute(
    dataset="pacs", files=(PACS_FILE,), arrange=arrange_pacs, folder="PACS",
    note="Manual (Google Drive). No checksum is published: checked by the zip CRCs and the 4 x 7 domain/class "
         "folders, then by verify (9,991 images).",
))
