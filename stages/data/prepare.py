"""``python -m stages.data prepare --dataset NAME --data-root R [--from DIR] [--mirror URL]``.

Puts one benchmark under the data root in the layout its adapter reads, from its official release
(``stages.data.routes.PrepareRoute``):

1. every published file is taken from ``--from DIR`` or ``<data root>/.downloads/`` when present,
   else downloaded there with ``requests`` (streamed, a tqdm bar, resumable: the bytes go to
   ``<name>.part`` and an interrupted download, whether the connection dropped or the process was
   killed, continues with an HTTP Range request);
2. each file's published size and sha256/md5 (or, for a file pinned in a git repository, its git blob
   id ``RemoteFile.git_sha1``) is checked (once per file: a ``<name>.verified`` stamp keyed by its size
   and mtime spares re-hashing a 138 GB tar on a rerun); a mismatch names the file and fetches it
   again once, then stops with the fix. A file with none of these follows the unpublished-checksum
   rule of ``stages.data.prepare_routes._checks``;
3. files behind a login or a browser (``RemoteFile.manual``: ImageNet's licence, Google Drive) are
   never fetched: when any is missing, one error lists every missing file with its manual step and
   the folder to put it in;
4. ``route.arrange`` fills a fresh temporary folder beside the final one, the result is verified
   against the dataset's manifest (``stages.data.verify``, listing only), and only then renamed
   into place: an interrupted prepare never leaves a half-arranged dataset under its real name.

A dataset whose adapter also reads another dataset's files (``PrepareRoute.requires``: cifar10.02
reads cifar10's test_batch) has those prepared first. A dataset that is already in place and
verifies is left alone (a no-op, said so). ``--mirror URL``
(or ``STAGES_DATA_MIRROR``) replaces every source's scheme and host and keeps its path: a site
mirror serves each file at its official URL's path (docs/evaluation.md lists them), and with a mirror
even the manual files are fetched from it. Errors are one ``DatasetError`` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stages.data.routes import PrepareRoute, RemoteFile, prepare_routes
from stages.data.source import DatasetError, dataset_layouts
from stages.io import atomic_write_json, file_digest

if TYPE_CHECKING:
    from stages.data.verify import DatasetReport

DOWNLOADS = ".downloads"
MIRROR_ENV = "STAGES_DATA_MIRROR"
STREAM_BYTES = 1 << 16
"""Bytes per network read: a dropped connection loses at most this much of what arrived."""
ATTEMPTS = 5
"""Connection attempts per file and fetch (each resumes where the previous one stopped)."""
TIMEOUT_S = 60


def load_routes() -> dict[str, PrepareRoute]:
    """Every registered route (importing ``stages.data.prepare_routes`` registers them)."""
    import stages.data.prepare_routes  # noqa: F401  (registers every route module)

    return prepare_routes()


def get_route(dataset: str) -> PrepareRoute:
    """The route of `dataset`, or a DatasetError naming the datasets that have one."""
    routes = load_routes()
    if dataset not in routes:
        raise DatasetError(f"no prepare route for dataset {dataset!r}; datasets with one: {', '.join(sorted(routes))}")
    return routes[dataset]


def mirror_url(url: str, name: str, mirror: str | None) -> str:
    """Where a mirror serves file `name` of official `url`: the mirror's scheme and host (and its own path
    prefix) + the URL's path; ``/<name>`` where the URL's path does not end with the file name (Google Drive)."""
    if not mirror:
        return url
    path = urlsplit(url).path
    if not path.endswith("/" + name):
        path = "/" + name
    return mirror.rstrip("/") + path


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file's bytes (``git hash-object``): sha1 of ``b"blob <size>\\0"`` + content."""
    return file_digest(path, "sha1", f"blob {os.path.getsize(path)}\0".encode())


CHECKSUMS: dict[str, Callable[[Path], str]] = {
    "sha256": lambda path: file_digest(path, "sha256"),
    "md5": lambda path: file_digest(path, "md5"),
    "git_sha1": git_blob_sha1,
}
"""``RemoteFile`` checksum field -> how to compute it, in order of preference."""


def _expected(file: RemoteFile) -> tuple[str, str] | None:
    """(checksum field, lower-case digest) the file must have, the first of ``CHECKSUMS`` it publishes (None: none)."""
    for field in CHECKSUMS:
        digest = getattr(file, field)
        if digest:
            return field, digest.lower()
    return None


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def checksum_problem(file: RemoteFile, path: Path) -> str | None:
    """Why `path` is not `file` (wrong size or checksum), None when it is; a matching result is stamped."""
    expected = _expected(file)
    stat = path.stat()
    if file.size is not None and stat.st_size != file.size:
        return f"{path} has {stat.st_size:,} bytes, the release has {file.size:,}"
    if expected is None:
        return None
    algorithm, digest = expected
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, algorithm: digest}
    stamp = _stamp_path(path)
    try:
        if json.loads(stamp.read_text()) == key:
            return None
    except (OSError, ValueError):
        pass
    print(f"checking {algorithm} of {path} ...", file=sys.stderr)
    found = CHECKSUMS[algorithm](path)
    if found != digest:
        return f"{path}: {algorithm} {found}, the release has {digest}"
    try:
        atomic_write_json(stamp, key)
    except OSError:  # a read-only --from folder: the check simply runs again next time
        pass
    return None


def download(url: str, destination: Path, size: int | None = None, session: object | None = None,
             progress: bool = True) -> Path:
    """Stream `url` to `destination`, resuming ``<destination>.part`` with HTTP Range; return `destination`.

    A dropped connection is retried (``ATTEMPTS`` times, each resuming); a server that ignores
    Range restarts the file from the start. HTTP errors name the URL.
    """
    import requests
    from tqdm import tqdm

    session = session or requests.Session()
    part = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with session.get(url, stream=True, headers=headers, timeout=TIMEOUT_S) as response:
                if response.status_code == 416 and offset and size is not None and offset == size:
                    break  # the .part already holds every byte
                if response.status_code not in (200, 206):
                    raise DatasetError(f"{url}: HTTP {response.status_code} {response.reason}. Check the URL or "
                                       f"--mirror/{MIRROR_ENV}, or download {destination.name} yourself into "
                                       f"{destination.parent}")
                if response.status_code == 200:
                    offset = 0  # no Range support (or a fresh start): write from the first byte
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else size
                with open(part, "ab" if offset else "wb") as handle, \
                        tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=destination.name,
                             disable=not progress, file=sys.stderr) as bar:
                    for chunk in response.iter_content(STREAM_BYTES):
                        handle.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise requests.ConnectionError(f"connection closed at {part.stat().st_size:,} of {total:,} bytes")
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            last_error = error
            print(f"{destination.name}: {error}; resuming ({attempt + 1}/{ATTEMPTS})", file=sys.stderr)
            time.sleep(min(2 ** attempt, 30) * 0.1)
    else:
        raise DatasetError(f"{url}: download failed after {ATTEMPTS} attempts ({last_error}); rerun the same command "
                           f"to resume {part}, or download {destination.name} yourself into {destination.parent}")
    os.replace(part, destination)
    return destination


def _manual_message(missing: list[RemoteFile], route: PrepareRoute, downloads: Path, from_dir: Path | None,
                    data_root: Path) -> str:
    """The one error for every missing manual file: what to download, from where, where to put it."""
    place = from_dir or downloads
    lines = [f"{route.dataset}: {len(missing)} file(s) must be downloaded by hand (licence or login):"]
    lines += [f"  - {file.name}: {file.manual}" for file in missing]
    lines.append(f"Put {'it' if len(missing) == 1 else 'them'} in {place}, then rerun: "
                 f"python -m stages.data prepare --dataset {route.dataset} --data-root {data_root}"
                 + (f" --from {from_dir}" if from_dir else ""))
    if route.note:
        lines.append(route.note)
    return "\n".join(lines)


def gather_files(route: PrepareRoute, data_root: Path, from_dir: Path | None = None, mirror: str | None = None,
                 session: object | None = None, progress: bool = True) -> dict[str, Path]:
    """Each of the route's files, checked: from `from_dir`, the downloads folder, or downloaded there."""
    downloads = Path(data_root) / DOWNLOADS
    missing_manual = []
    local: dict[str, Path] = {}
    for file in route.files:
        candidates = [from_dir / file.name] if from_dir else []
        candidates.append(downloads / file.name)
        present = next((path for path in candidates if path.is_file()), None)
        if present is not None:
            local[file.name] = present
        elif file.manual and not (mirror and file.url):
            missing_manual.append(file)
    if missing_manual:
        raise DatasetError(_manual_message(missing_manual, route, downloads, from_dir, data_root))
    files: dict[str, Path] = {}
    for file in route.files:
        url = mirror_url(file.url, file.name, mirror)
        path = local.get(file.name)
        if path is None:
            path = download(url, downloads / file.name, file.size, session, progress)
        problem = checksum_problem(file, path)
        if problem is not None:
            fetchable = path.parent == downloads and (not file.manual or mirror)
            if not fetchable:
                raise DatasetError(f"{problem}.\nThis is not the official {file.name}: download it again "
                                   + (f"({file.manual}) " if file.manual else f"from {file.url} ")
                                   + f"and put it in {path.parent}")
            print(f"{problem}; fetching it again once", file=sys.stderr)
            path.unlink()
            _stamp_path(path).unlink(missing_ok=True)
            path = download(url, downloads / file.name, file.size, session, progress)
            problem = checksum_problem(file, path)
            if problem is not None:
                raise DatasetError(f"{problem} (fetched twice from {url}).\nThe server sends a different file than "
                                   f"the release: check --mirror/{MIRROR_ENV}, or download {file.name} yourself "
                                   f"into {downloads}")
        files[file.name] = path
    return files


def prepare(dataset: str, data_root: Path, mirror: str | None = None, from_dir: Path | None = None,
            route: PrepareRoute | None = None, session: object | None = None, progress: bool = True) -> str:
    """Prepare `dataset` under `data_root` (see the module docstring), the datasets its route requires first;
    return what was done, one line per dataset."""
    data_root = Path(data_root)
    route = route or get_route(dataset)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    from_dir = Path(from_dir) if from_dir is not None else None
    if from_dir is not None and not from_dir.is_dir():
        raise DatasetError(f"--from {from_dir}: no such folder (it should hold the downloaded {route.dataset} files: "
                           f"{', '.join(file.name for file in route.files)})")
    lines = [prepare(required, data_root, mirror, from_dir, session=session, progress=progress)
             for required in route.requires]
    return "\n".join([*lines, _prepare_one(dataset, route, data_root, mirror, from_dir, session, progress)])


def _prepare_one(dataset: str, route: PrepareRoute, data_root: Path, mirror: str | None, from_dir: Path | None,
                 session: object | None, progress: bool) -> str:
    """Prepare `dataset` alone, its required datasets in place; return what was done, in one line."""
    from filelock import FileLock

    from stages.data.manifest import load_manifest
    from stages.data.verify import verify_dataset

    final = data_root / route.folder
    (data_root / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    with FileLock(data_root / DOWNLOADS / f"{dataset}.lock"):
        if load_manifest(dataset) is None:  # nothing to verify against: a folder in place is taken as prepared
            if final.exists():
                return f"{dataset}: {final} is in place (no manifest to verify it against); nothing to do"
            files = gather_files(route, data_root, from_dir, mirror, session, progress)
            _arrange(route, files, data_root, None)
            return f"{dataset}: prepared under {final} (no manifest to verify it against)"
        report = verify_dataset(dataset, data_root)
        if report.ok:
            return f"{dataset}: already prepared under {report.folder or final} and it verifies; nothing to do"
        if final.exists():
            raise DatasetError(f"{final} exists but does not verify:\n{report.text()}\nMove it away "
                               f"(mv {final} {final}.old) and rerun this command to prepare it afresh")
        files = gather_files(route, data_root, from_dir, mirror, session, progress)
        arranged = _arrange(route, files, data_root, verify_dataset)
    return f"{dataset}: prepared under {final} ({arranged.summary()})"


def _arrange(route: PrepareRoute, files: dict[str, Path], data_root: Path,
             verify: Callable[[str, Path], DatasetReport] | None) -> DatasetReport | None:
    """``route.arrange`` into ``<data root>/.<folder>.preparing/<folder>``, verify it there, rename it into place."""
    staging = data_root / f".{route.folder}.preparing"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted prepare: arrange starts from a fresh folder
    target = staging / route.folder
    target.mkdir(parents=True)
    links = []
    for required in route.requires:  # their folders beside it (as links), so that its verify can read them
        folder = dataset_layouts()[required].locate(data_root)
        links.append(staging / folder.name)
        links[-1].symlink_to(folder.resolve(), target_is_directory=True)
    print(f"{route.dataset}: arranging into {target} ...", file=sys.stderr)
    route.arrange(files, target)
    arranged = verify(route.dataset, staging) if verify is not None else None
    if arranged is not None and not arranged.ok:
        raise DatasetError(f"{route.dataset}: the arranged folder does not match its manifest:\n{arranged.text(fix=False)}\n"
                           f"It is left at {target} for inspection; the archives are in {data_root / DOWNLOADS}")
    os.rename(target, data_root / route.folder)
    for link in links:
        link.unlink()
    staging.rmdir()
    return arranged


def prepare_all(datasets: Iterable[str], data_root: Path, mirror: str | None = None,
                from_dir: Path | None = None, progress: bool = True) -> list[str]:
    """Prepare every dataset of `datasets` that has a route, one line each; datasets without one (your own
    data, the demo's) are named, not skipped silently. One failure does not stop the others: every error
    is raised at the end in one DatasetError."""
    routes = load_routes()
    lines, errors = [], []
    for dataset in datasets:
        if dataset not in routes:
            lines.append(f"{dataset}: no prepare route (your own data, or built by the workflow); left as it is")
            continue
        try:
            lines.append(prepare(dataset, data_root, mirror, from_dir, progress=progress))
        except DatasetError as error:
            errors.append(str(error))
    if errors:
        raise DatasetError("\n".join(lines + errors))
    return lines
