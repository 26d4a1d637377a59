"""Hostile and awkward files: code in dataset pickles, decompression bombs, locks and leftovers on shared
filesystems, and the once-per-dataset-version image check (issue 26, parts 4 and 5)."""

from __future__ import annotations

import ast
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

import fakes
import stages.io
from stages.data.check import check_images, check_images_once, image_problem
from stages.data.source import MAX_IMAGE_PIXELS, DatasetError, build_dataset, load_image
from stages.evaluation import image_cache
from stages.evaluation.image_cache import CachedImages, cache_file, evaluation_images
from stages.io import held_lock, remove_dead_scratch, scratch_dir

REPO = Path(__file__).resolve().parents[1]


# --- No code from data files -----------------------------------------------------------------------------

class _Exec:
    """A pickle payload: loading it runs Python code that writes `marker` (what a tampered mirror does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


class _System(_Exec):
    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=[_Exec, _System], ids=["builtins.exec", "os.system"])
def payload(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[object, Path]]:
    marker = tmp_path / "marker"
    attack = request.param(marker)
    pickle.loads(pickle.dumps(attack))  # the payload is live: plain pickle runs it
    assert marker.is_file()
    marker.unlink()
    yield attack, marker


def _batch(images: np.ndarray, labels: list[int], **extra: object) -> dict:
    """A CIFAR python batch as the original holds it: planar rows, labels, names."""
    return {"batch_label": "testing batch 1 of 1", "labels": labels,
            "data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
            "filenames": [f"img_{n}.png" for n in range(len(labels))], **extra}


def _write_pickle(path: Path, payload: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


def test_cifar_batch_with_a_code_payload_is_refused_and_nothing_runs(tmp_path: Path, payload: tuple) -> None:
    attack, marker = payload
    images = fakes.cifar_pixels(3, 0)
    path = _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", _batch(images, [0, 1, 2], batch_label=attack))
    with pytest.raises(DatasetError) as caught:
        build_dataset("cifar10", tmp_path, "test")
    message = str(caught.value)
    assert str(path) in message and ("builtins.exec" in message or "posix.system" in message)
    assert "nothing in it was run" in message and "re-download cifar-10-python.tar.gz" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_batches_read_identically_under_every_protocol(tmp_path: Path, protocol: int) -> None:
    images = fakes.cifar_pixels(4, protocol)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", _batch(images, [3, 1, 4, 1]), protocol)
    source = build_dataset("cifar10", tmp_path, "test")
    assert source.labels == [3, 1, 4, 1]
    np.testing.assert_array_equal(np.stack(source.images), images)
    batch = {"data": images.transpose(0, 3, 1, 2).reshape(4, 3072), "fine_labels": [0, 99, 5, 7], "coarse_labels": [0] * 4}
    _write_pickle(tmp_path / "cifar-100-python" / "test", batch, protocol)
    source = build_dataset("cifar100", tmp_path, "test")
    assert source.labels == [0, 99, 5, 7]
    np.testing.assert_array_equal(np.stack(source.images), images)


def test_damaged_cifar_batches_are_one_clear_error(tmp_path: Path) -> None:
    fakes.cifar10(tmp_path, [0, 1, 2])
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    whole = path.read_bytes()
    for cut in np.random.default_rng(0).integers(1, len(whole) - 1, size=12):
        path.write_bytes(whole[:cut])
        with pytest.raises(DatasetError, match=rf"^cannot read CIFAR batch {path}: .*Re-extract"):
            build_dataset("cifar10", tmp_path, "test")
    _write_pickle(path, [1, 2, 3])
    with pytest.raises(DatasetError, match="holds a list, not a CIFAR batch"):
        build_dataset("cifar10", tmp_path, "test")


def test_cifar102_old_pickled_npy_reads_without_allow_pickle_and_refuses_payloads(tmp_path: Path, payload: tuple) -> None:
    attack, marker = payload
    fakes.cifar10(tmp_path, [0, 1])
    images = fakes.cifar_pixels(2, 5)
    npy = tmp_path / "CIFAR-10.2" / "cifar102_test.npy"
    npy.parent.mkdir(parents=True)
    np.save(npy, {"images": images, "labels": np.array([7, 8])}, allow_pickle=True)  # the older distribution
    source = build_dataset("cifar10.02", tmp_path, "test")
    assert source.labels == [0, 1, 7, 8]
    np.testing.assert_array_equal(np.stack(source.images[2:]), images)

    np.save(npy, {"images": images, "labels": np.array([7, 8]), "note": attack}, allow_pickle=True)
    with pytest.raises(DatasetError, match=rf"^{npy} names the Python global .*refused, nothing in it was run"):
        build_dataset("cifar10.02", tmp_path, "test")
    assert not marker.exists()

    npz = npy.with_suffix(".npz")  # an .npz hiding an object array: refused by allow_pickle=False, never unpickled
    np.savez(npz, images=np.array([attack], dtype=object), labels=np.array([7]))
    with pytest.raises(DatasetError, match=rf"^cannot read {npz}: .*allow_pickle.*Re-download"):
        build_dataset("cifar10.02", tmp_path, "test")
    assert not marker.exists()


def test_no_user_file_is_read_by_a_full_unpickler() -> None:
    """No call in the package unpickles without restriction: no ``pickle.load(s)``, no ``allow_pickle=True``,
    and every ``torch.load`` with ``weights_only=True`` (read from the syntax tree, so docstrings do not count)."""
    offenders = []
    for path in sorted((REPO / "stages").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
            if (name in ("pickle.load", "pickle.loads", "pickle.Unpickler") or keywords.get("allow_pickle") == "True"
                    or (name == "torch.load" and keywords.get("weights_only") != "True")):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


# --- Decompression bombs ---------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG of `width` x `height`, written row by row: a few hundred KB on disk at 30,000 x 30,000
    (2.7 GB once decoded to RGB), in well under a second and a few KB of memory."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "none", then the packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 30_000, 30_000)


def test_a_decompression_bomb_is_one_unreadable_file_named_with_size_limit_and_fix(bomb: Path) -> None:
    assert bomb.stat().st_size < 3_000_000 and struct.unpack(">II", bomb.read_bytes()[16:24]) == (30_000, 30_000)
    with pytest.raises(Image.DecompressionBombError):  # what training, check and skip_corrupt met before
        Image.open(bomb)
    with pytest.raises(DatasetError) as caught:
        load_image(bomb)
    message = str(caught.value)
    assert message.startswith(f"cannot read image {bomb}: ") and "900000000 pixels" in message
    assert f"{MAX_IMAGE_PIXELS:,}" in message and "STAGES_MAX_IMAGE_PIXELS" in message


def test_an_image_between_the_cap_and_pils_error_is_refused_at_its_header(tmp_path: Path) -> None:
    """13,000 x 13,000 would decode to 500 MB (2.2 GB as float): PIL only warns; it is refused unread."""
    path = bomb_png(tmp_path / "big.png", 13_000, 13_000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DatasetError) as caught:
        load_image(path)
    assert "13000 x 13000 = 169,000,000 pixels" in str(caught.value) and str(path) in str(caught.value)


def test_check_lists_bombs_among_good_images_in_header_and_decode_mode(tmp_path: Path, bomb: Path) -> None:
    folder = tmp_path / "data"
    fakes.colour_folder(folder, {"train": 4})
    target = next((folder / "imagefolder" / "train").rglob("*.png"))
    target.write_bytes(bomb.read_bytes())
    source = build_dataset("imagefolder", folder, "train")
    for decode in (False, True):
        (bad,) = check_images(source, decode=decode)
        assert bad[0] == target and "900000000 pixels" in bad[1] and "STAGES_MAX_IMAGE_PIXELS" in bad[1]


def test_training_samples_count_a_bomb_as_corrupt_for_skip_corrupt(tmp_path: Path, bomb: Path) -> None:
    from stages.training.loop import TrainingSamples, collate_samples

    folder = tmp_path / "data"
    fakes.colour_folder(folder, {"train": 4})
    source = build_dataset("imagefolder", folder, "train")
    Path(source.images[1]).write_bytes(bomb.read_bytes())
    samples = TrainingSamples(source, T.Compose([T.Resize(8), T.ToTensor()]), seed=0)
    batch = collate_samples([samples[(0, index)] for index in range(4)])
    assert len(batch["label"]) == 3 and len(batch["corrupt"]) == 1
    assert batch["corrupt"][0].startswith(f"cannot read image {source.images[1]}: ") and "900000000" in batch["corrupt"][0]


def test_the_pixel_cap_is_set_by_the_environment(tmp_path: Path, bomb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = fakes.image(tmp_path / "small.png")  # 8 x 8
    monkeypatch.setenv("STAGES_MAX_IMAGE_PIXELS", "63")
    with pytest.raises(DatasetError, match=r"8 x 8 = 64 pixels, over the decode limit of 63 pixels"):
        load_image(small)
    monkeypatch.setenv("STAGES_MAX_IMAGE_PIXELS", "64")
    assert load_image(small).size == (8, 8)
    # Raised above PIL's own limit (process-wide, restored after the test): the bomb's header now passes.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setenv("STAGES_MAX_IMAGE_PIXELS", "1e9")
    assert image_problem(bomb, decode=False) is None
    monkeypatch.setenv("STAGES_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DatasetError, match="STAGES_MAX_IMAGE_PIXELS='lots' is not a positive whole number"):
        load_image(small)


# --- Locks and leftovers on shared filesystems -----------------------------------------------------------

def _start(code: str) -> subprocess.Popen:
    """A Python process running `code` (which prints one line when ready), started from the repository."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    process.ready = process.stdout.readline().strip()  # type: ignore[attr-defined]
    return process


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _holder(lock_file: Path) -> subprocess.Popen:
    return _start(f"""
        import time
        from stages.io import held_lock
        with held_lock({str(lock_file)!r}, "testing", 60) as held:
            print("held" if held else "not held", flush=True)
            time.sleep(120)
    """)


def test_a_lock_held_too_long_is_named_with_its_holder_and_the_waiter_goes_on(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lock_file = tmp_path / "shared" / "x.lock"
    holder = _holder(lock_file)
    try:
        assert holder.ready == "held"
        started = time.monotonic()
        with held_lock(lock_file, "building x", wait_limit_s=1.0) as held:
            assert not held
        assert time.monotonic() - started < 10
        out = capsys.readouterr().out
        assert f"waiting for {lock_file} (held by pid {holder.pid} on host " in out and "building x" in out
        assert f"stayed held by pid {holder.pid}" in out and f"delete {lock_file}" in out
    finally:
        _end(holder)


def test_a_killed_holder_frees_the_lock_at_once_and_a_frozen_one_after_the_lease(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = tmp_path / "x.lock"
    holder = _holder(lock_file)
    assert holder.ready == "held" and lock_file.exists()
    _end(holder)  # SIGKILL: no release, the marker stays
    assert lock_file.exists()
    started = time.monotonic()
    with held_lock(lock_file, "testing", wait_limit_s=10.0) as held:  # same host, pid gone: taken over at once
        assert held
    assert time.monotonic() - started < 2
    # A holder that stops refreshing while its pid lives (a hung node, here SIGSTOP) is taken over after the lease.
    monkeypatch.setattr(stages.io, "LEASE_SECONDS", 1.0)
    frozen = _start(f"""
        import time
        import stages.io
        stages.io.LEASE_SECONDS = 1.0
        with stages.io.held_lock({str(lock_file)!r}, "testing", 60):
            print("held", flush=True)
            time.sleep(120)
    """)
    try:
        assert frozen.ready == "held"
        os.kill(frozen.pid, signal.SIGSTOP)
        with held_lock(lock_file, "testing", wait_limit_s=15.0) as held:
            assert held
    finally:
        _end(frozen)


PREPROCESS = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])


def test_the_crop_cache_removes_a_dead_builds_temporary_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.waterbirds(tmp_path / "data")
    source = build_dataset("waterbirds", tmp_path / "data", "test")
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache_file(cache, source, T.Compose(PREPROCESS.transforms[:2]))
    leftovers = [target.with_name(f"{target.name}.node7-4242.tmp"), target.with_name(f"{target.name}.tmp4243")]
    for leftover in leftovers:  # what a killed build (this code's name, and the older one) leaves
        leftover.write_bytes(b"\0" * 4096)
    other = cache / "other-0123.npy.node7-4244.tmp"  # another cache file's build: not this lock's business
    other.write_bytes(b"\0")
    legacy_lock = target.with_suffix(".lock")  # older code's flock file, empty and never removed
    legacy_lock.touch()
    started = time.monotonic()
    assert isinstance(evaluation_images(source, PREPROCESS, cache, workers=0), CachedImages)
    assert time.monotonic() - started < 30  # no wait on the legacy file
    assert target.is_file() and not any(path.exists() for path in leftovers) and other.exists()
    assert not legacy_lock.exists() and sorted(path.name for path in cache.iterdir()) == sorted([other.name, target.name])
    assert f"removed {leftovers[0]}" in capsys.readouterr().out


def test_the_crop_cache_is_skipped_when_its_lock_stays_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    fakes.waterbirds(tmp_path / "data")
    source = build_dataset("waterbirds", tmp_path / "data", "test")
    lock_file = image_cache.lock_file(cache_file(tmp_path / "cache", source, T.Compose(PREPROCESS.transforms[:2])))
    holder = _holder(lock_file)
    monkeypatch.setattr(image_cache, "WAIT_LIMIT_S", 1.0)
    try:
        assert holder.ready == "held"
        dataset = evaluation_images(source, PREPROCESS, tmp_path / "cache", workers=0)
        assert not isinstance(dataset, CachedImages) and len(dataset) == len(source)
        assert f"{lock_file} stayed held by pid {holder.pid}" in capsys.readouterr().out
    finally:
        _end(holder)


def test_scratch_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    eval_dir = tmp_path / "eval"

    def scratch_process(then: str) -> subprocess.Popen:
        return _start(f"""
            import time
            from stages.io import scratch_dir
            with scratch_dir({str(eval_dir)!r}, ".crops-") as folder:
                (folder / "crops.npy").write_bytes(b"0" * 65536)
                print(folder, flush=True)
                {then}
        """)

    live = scratch_process("time.sleep(120)")
    dead = scratch_process("time.sleep(120)")  # (its own start sweeps too: the live folder is kept)
    _end(dead)  # killed with its folder in place
    try:
        dead_folder, live_folder = Path(dead.ready), Path(live.ready)
        assert dead_folder.is_dir() and live_folder.is_dir()
        foreign = eval_dir / ".crops-othernode-77-abc"  # a process on another host that stopped refreshing long ago
        foreign.mkdir()
        (foreign / stages.io.OWNER_MARKER).write_text("filelock/2\npid=77\nhost=othernode\nmode=lease\n")
        old = time.time() - stages.io.STALE_SCRATCH_SECONDS - 60
        os.utime(foreign / stages.io.OWNER_MARKER, (old, old))
        legacy_old, legacy_new = eval_dir / ".crops-k2j3l4", eval_dir / ".crops-m5n6o7"  # tempfile's, no marker
        legacy_old.mkdir(), legacy_new.mkdir()
        os.utime(legacy_old, (time.time() - stages.io.LEGACY_SCRATCH_SECONDS - 60,) * 2)
        with scratch_dir(eval_dir, ".crops-") as mine:
            assert mine.is_dir() and mine.name.startswith(".crops-") and str(os.getpid()) in mine.name
            assert not dead_folder.exists() and not foreign.exists() and not legacy_old.exists()
            assert live_folder.is_dir() and legacy_new.is_dir()
        assert not mine.exists() and live_folder.is_dir()
        assert remove_dead_scratch(eval_dir, ".crops-") == []
    finally:
        _end(live)
    assert remove_dead_scratch(eval_dir, ".crops-") == [live_folder]


# --- The train-set check, once per dataset version -------------------------------------------------------

_opened: list[str] = []
_watching: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _watching and isinstance(args[0], (str, Path)) and str(args[0]).startswith(_watching[0]):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # for the process's life; it records only while a test watches a folder


def _opens(root: Path, call: object) -> tuple[object, list[str]]:
    """`call()` and the files under `root` that Python opened meanwhile (from any thread)."""
    _opened.clear()
    _watching[:] = [str(root)]
    try:
        result = call()  # type: ignore[operator]
    finally:
        _watching.clear()
    return result, list(_opened)


def test_the_image_check_runs_once_per_dataset_version(tmp_path: Path) -> None:
    root = fakes.colour_folder(tmp_path / "data", {"train": 12})
    source = build_dataset("imagefolder", root, "train")
    stamps = Path(os.environ["STAGES_CHECK_STAMPS"])
    verdict, opened = _opens(root, lambda: check_images_once(source))
    assert verdict == [] and len(opened) == 12
    assert len(list(stamps.glob("imagefolder-header-*.json"))) == 1
    listed_again = build_dataset("imagefolder", root, "train")  # (reads classnames.json: outside the count)
    verdict, opened = _opens(root, lambda: check_images_once(listed_again))
    assert verdict == [] and opened == []  # unchanged: the stamp answers, no image is opened

    # The stamp trusts (path, size, mtime): garbage of the same size under the old mtime is not seen...
    victim = source.images[3]
    state = victim.stat()
    victim.write_bytes(b"\xff" * state.st_size)
    os.utime(victim, ns=(state.st_atime_ns, state.st_mtime_ns))
    assert _opens(root, lambda: check_images_once(source)) == ([], [])
    # ...and any real rewrite (a new mtime) is: the list's fingerprint changes and the check runs again.
    os.utime(victim, ns=(state.st_atime_ns, state.st_mtime_ns + 1_000_000))
    verdict, opened = _opens(root, lambda: check_images_once(source))
    assert [ref for ref, _ in verdict] == [victim] and len(opened) == 12
    verdict_again, opened = _opens(root, lambda: check_images_once(source))  # a bad verdict is stamped too
    assert verdict_again == verdict and opened == []


def test_a_changed_file_list_mode_or_cap_checks_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = fakes.colour_folder(tmp_path / "data", {"train": 6})
    source = build_dataset("imagefolder", root, "train")
    assert _opens(root, lambda: check_images_once(source, decode=True))[1] != []
    assert _opens(root, lambda: check_images_once(source, decode=False)) == ([], [])  # a decode stamp answers a header check
    fakes.image(Path(source.images[0]).with_name("new.png"))  # one more file: another version
    grown = build_dataset("imagefolder", root, "train")
    verdict, opened = _opens(root, lambda: check_images_once(grown))
    assert verdict == [] and len(opened) == len(grown) == 7
    Path(source.images[1]).unlink()  # one file fewer
    shrunk = build_dataset("imagefolder", root, "train")
    assert len(_opens(root, lambda: check_images_once(shrunk))[1]) == 6
    monkeypatch.setenv("STAGES_MAX_IMAGE_PIXELS", "10")  # another cap, another verdict
    verdict, opened = _opens(root, lambda: check_images_once(shrunk))
    assert len(verdict) == 6 and len(opened) == 6
    monkeypatch.delenv("STAGES_MAX_IMAGE_PIXELS")
    # A stamp folder that cannot be made: the check still runs, with a warning.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STAGES_CHECK_STAMPS", str(blocker / "stamps"))
    assert check_images_once(shrunk) == []
    assert "cannot keep image-check stamps" in capsys.readouterr().err


def test_shard_members_are_stamped_by_their_shards_stat(tmp_path: Path) -> None:
    from test_data_formats import write_shards

    folder = tmp_path / "webdataset" / "train"
    write_shards(folder, [3, 2])
    source = build_dataset("webdataset", tmp_path, "train", shards="{00000..00001}.tar")
    verdict, opened = _opens(folder, lambda: check_images_once(source))
    assert verdict == [] and len(opened) == 5  # each member read from its shard
    assert _opens(folder, lambda: check_images_once(source)) == ([], [])
    shard = folder / "00001.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000))  # a rewritten shard
    assert len(_opens(folder, lambda: check_images_once(source))[1]) == 5
