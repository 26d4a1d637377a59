"""Your own data: ``<data_root>/imagefolder/<split>/<class folder>/<image>``.

Fine-tune on any image-classification folder tree with ``data.train_set: imagefolder`` and
evaluate it with the benchmarks ``imagefolder-val`` / ``imagefolder-test``. Every split labels a
class the same way: the class order is the sorted union of the class folders of all splits
(``train``, ``val``, ``test``, ...), unless ``classnames.json`` (``{"folder": "display name"}``)
gives the order and the names; names default to the folder name with ``_`` as spaces.
An empty class folder is refused, naming it (it would become a class without images, with its
own label and head row). ``templates.txt`` (one prompt per line, ``{c}`` for the class name) sets the evaluation prompts
(default: "a photo of a {c}."); the training caption stays ``data.caption_template``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stages.data.layout import Layout, folder_dataset
from stages.data.source import DatasetError, LabeledImages, register_dataset

IMAGEFOLDER = Layout(
    "imagefolder", ("imagefolder",),
    "  imagefolder/{train,val,test}/<class folder>/<image>   (any split names; common image formats)\n"
    "  imagefolder/classnames.json   (optional: {\"folder\": \"display name\", ...} in label order)\n"
    "  imagefolder/templates.txt   (optional: evaluation prompts, one per line, {c} = class name)",
    "your own images, one folder per class in each split (a symlink named imagefolder under the data root works)",
)


def _class_folders(base: Path) -> tuple[list[str], list[str]]:
    """(folder names in label order, display names) from classnames.json or the splits' folders."""
    mapping_path = base / "classnames.json"
    if mapping_path.is_file():
        try:
            mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{mapping_path}: not valid JSON ({error})") from error
        if not isinstance(mapping, dict) or not mapping or not all(isinstance(v, str) for v in mapping.values()):
            raise DatasetError(f'{mapping_path}: expected a non-empty object {{"folder": "display name", ...}}')
        return list(mapping), list(mapping.values())
    folders: set[str] = set()
    with os.scandir(base) as splits:
        for split in (entry for entry in splits if entry.is_dir()):
            with os.scandir(split.path) as classes:
                folders |= {entry.name for entry in classes if entry.is_dir()}
    ordered = sorted(folders)
    return ordered, [folder.replace("_", " ") for folder in ordered]


def _templates(base: Path) -> list[str] | None:
    """The prompts of templates.txt (None when there is none)."""
    path = base / "templates.txt"
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [line for line in lines if "{c}" not in line]
    if not lines or bad:
        raise DatasetError(f"{path}: every line must be a prompt with {{c}} for the class name; bad: {bad[:3] or 'empty file'}")
    return lines


@register_dataset("imagefolder", IMAGEFOLDER)
def imagefolder(root: Path, split: str) -> LabeledImages:
    """Your own ``imagefolder/<split>/<class folder>/`` tree; classes consistent across splits."""
    base = IMAGEFOLDER.locate(root)
    split_folder = IMAGEFOLDER.require(base / split, root)
    folders, names = _class_folders(base)
    templates = _templates(base)
    extra = {"templates": templates} if templates else {}
    return folder_dataset("imagefolder", split_folder, {folder: label for label, folder in enumerate(folders)}, names,
                          allow_empty=False, **extra)
