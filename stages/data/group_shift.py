"""Group-shift benchmarks read from their standard layouts: Waterbirds and PACS (CIFAR-10.02 is in ``cifar``).

Waterbirds groups are ``2 * y + place`` (landbird/land, landbird/water, waterbird/land,
waterbird/water), as group_DRO, WILDS and the official StarFT loader number them. PACS groups
are its 4 domains; ``metadata["partitions"]`` adds the 28 class x domain groups.
"""

from __future__ import annotations

from pathlib import Path

from stages.data.layout import Layout, PathList, check_split, class_folders, classnames, data_file, int_column, read_csv
from stages.data.source import DatasetError, LabeledImages, register_dataset

WATERBIRDS = Layout(
    "waterbirds", ("waterbird_complete95_forest2water2", "waterbirds_v1.0"),
    "  waterbird_complete95_forest2water2/metadata.csv   (columns img_id, img_filename, y, split, place, place_filename)\n"
    "  waterbird_complete95_forest2water2/<NNN.Species_Name>/<image>.jpg   (paths as in img_filename)",
    "waterbird_complete95_forest2water2.tar.gz from nlp.stanford.edu/data/dro/ (github.com/kohpangwei/group_DRO), "
    "or WILDS: wilds.get_dataset('waterbirds', root_dir=R, download=True) -> waterbirds_v1.0/",
)
PACS = Layout(
    "pacs", ("PACS",),
    "  PACS/{art_painting,cartoon,photo,sketch}/{dog,elephant,giraffe,guitar,horse,house,person}/*.jpg|*.png   (9,991 images)",
    "PACS.zip via DomainBed's scripts/download.py (download_pacs; the extracted kfold/ folder renamed to PACS/)",
)
WATERBIRDS_SPLITS = {"train": 0, "val": 1, "test": 2}


@register_dataset("waterbirds", WATERBIRDS)
def waterbirds(root: Path, split: str) -> LabeledImages:
    """Waterbirds ``train``/``val``/``test`` from ``metadata.csv``; 4 groups = bird type x place."""
    check_split("waterbirds", split, WATERBIRDS_SPLITS)
    base = WATERBIRDS.locate(root)
    metadata = WATERBIRDS.require(base / "metadata.csv", root)
    rows = read_csv(metadata, ("img_filename", "y", "split", "place"))
    split_ids = int_column(metadata, rows, "split", range(3))
    labels = int_column(metadata, rows, "y", range(2))
    places = int_column(metadata, rows, "place", range(2))
    keep = [i for i, split_id in enumerate(split_ids) if split_id == WATERBIRDS_SPLITS[split]]
    if not keep:
        raise DatasetError(f"{metadata}: no rows with split == {WATERBIRDS_SPLITS[split]} ({split})")
    names = classnames("waterbirds")
    group_names = [f"{bird}/{place}" for bird in names for place in ("land", "water")]
    groups = [2 * label + place for label, place in zip(labels, places)]
    train_groups = [group for group, split_id in zip(groups, split_ids) if split_id == WATERBIRDS_SPLITS["train"]]
    return LabeledImages(
        name="waterbirds", classnames=names,
        images=PathList(base, [rows[i]["img_filename"] for i in keep]),
        labels=[labels[i] for i in keep],
        groups=[groups[i] for i in keep],
        group_names=group_names,
        # For WILDS' adjusted average (metric adjusted_mean): test accuracy re-weighted to these shares.
        metadata={"train_group_counts": {name: train_groups.count(g) for g, name in enumerate(group_names)}},
    )


@register_dataset("pacs", PACS)
def pacs(root: Path, split: str) -> LabeledImages:
    """PACS ``test`` = all 9,991 images (zero-shot only); groups = the 4 domains."""
    check_split("pacs", split, ("test",))
    base = PACS.locate(root)
    meta = data_file("classnames", "pacs")
    names, domains = list(meta["classnames"]), list(meta["domains"])
    label_of = {name: label for label, name in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    for domain_id, domain in enumerate(domains):
        domain_paths, domain_labels = class_folders("pacs", PACS.require(base / domain, root), label_of)
        paths += [f"{domain}/{path}" for path in domain_paths]
        labels += domain_labels
        groups += [domain_id] * len(domain_labels)
    class_domain = [label * len(domains) + group for label, group in zip(labels, groups)]
    return LabeledImages(
        name="pacs", classnames=names, images=PathList(base, paths), labels=labels, groups=groups,
        group_names=domains,
        metadata={"partitions": {"class_domain": (class_domain, [f"{n}/{d}" for n in names for d in domains])}},
    )
