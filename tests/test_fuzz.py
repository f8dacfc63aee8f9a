"""Fuzzing the input paths with hypothesis: random and mutated image files, and mutated zips.

Every target must either work or fail with a clean CnnlabError (what the CLI prints as one line
and a page shows with st.error); any other exception, or a hang, is a bug. Mutations start from
valid PNG/JPEG/GIF/BMP/WEBP/TIFF files (several modes, EXIF) and flip bits, truncate, insert,
delete and overwrite header integers with extreme values. Runs are derandomized (same examples on
every run) and bounded; raise FUZZ_SCALE for a longer local session, e.g. FUZZ_SCALE=20.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab import archive, data, predict, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.errors import CnnlabError, DataError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    # PIL warns (and then carries on or raises) on the corrupt TIFF/EXIF tags the fuzzer makes;
    # the warning is the expected reaction to a damaged file, not a problem in cnnlab.
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin"),
]

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=1000 * SCALE,
    deadline=None,  # a loaded CI machine must not turn slowness into failures; timeout guards hangs
    database=None,  # no .hypothesis folder in the repository
    derandomize=SCALE == 1,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    """Small valid files in every format and the modes that take special paths in decode."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so exif_transpose has work to do
    return {
        "png-rgb": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png-palette": _encode(rgb.convert("P"), "PNG", transparency=0),
        "png-16bit": _encode(Image.fromarray(rng.integers(0, 65535, (6, 6), np.uint16)), "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=80),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-progressive-cmyk": _encode(rgb.convert("CMYK"), "JPEG", progressive=True),
        "gif": _encode(rgb.convert("P"), "GIF"),
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP", quality=60),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-lzw-float": _encode(
            Image.fromarray(rng.random((5, 5)).astype(np.float32)), "TIFF", compression="tiff_lzw"
        ),  # fmt: skip
    }


SEEDS = _seeds()
EXTREMES = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]


@st.composite
def mutated(draw, seeds: dict[str, bytes] = SEEDS) -> bytes:
    """A valid file with 1-6 random mutations, half of them aimed at the header."""
    buf = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        end = len(buf) - 1
        pos = draw(st.one_of(st.integers(0, min(63, end)), st.integers(0, end)))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "extreme"]))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[max(pos, 1) :]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        else:  # widths, heights, chunk lengths and offsets at their limits
            buf[pos : pos + 4] = draw(st.sampled_from(EXTREMES))
    return bytes(buf)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0"]
random_files = st.builds(
    lambda m, b: m + b, st.sampled_from([b"", *MAGICS]), st.binary(max_size=300)
)
any_file = st.one_of(mutated(), random_files)


# ---------------------------------------------------------------- decode / load_image
@FUZZ
@given(blob=any_file)
def test_load_image_works_or_raises_data_error(blob: bytes) -> None:
    try:
        out = predict.load_image(blob, 16)
    except DataError:
        return
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


@FUZZ
@given(blob=any_file)
def test_what_the_scan_accepts_also_decodes(scratch: Path, blob: bytes) -> None:
    """_verify (the scan's check) never raises, and a file it passes decodes in load_tensors."""
    path = scratch / "x.img"
    path.write_bytes(blob)
    reason = data._verify(path)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is None:
        out = data.decode_image(path, 16)
        assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)


# ---------------------------------------------------------------- scan and prepare a folder
@settings(FUZZ, max_examples=40 * SCALE)
@given(blobs=st.lists(any_file, min_size=1, max_size=4))
def test_scan_and_prepare_a_folder_of_damaged_files(blobs: list[bytes]) -> None:
    """Two good images per class plus fuzzed files: scan lists problems, prepare() decodes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            for i in range(3):
                (root / c / f"good{i}.png").write_bytes(SEEDS["png-rgb"])
        for i, blob in enumerate(blobs):
            ext = (".png", ".jpg", ".gif", ".webp", ".tif")[i % 5]
            (root / "ab"[i % 2] / f"fuzz{i}{ext}").write_bytes(blob)
        os.environ["CNNLAB_HOME"] = str(Path(tmp) / "home")  # restored by the autouse fixture
        try:
            result = data.scan(root)
            prepared = data.prepare(DataConfig(path=str(root), image_size=12))
        except CnnlabError:
            return
        assert result.n_images >= 6 and len(result.problems) <= len(blobs)
        assert prepared.images.shape == (result.n_images, 3, 12, 12)


@pytest.fixture(autouse=True)
def _keep_home(monkeypatch: pytest.MonkeyPatch):
    """The folder test sets CNNLAB_HOME per example; monkeypatch puts the old value back."""
    monkeypatch.setenv("CNNLAB_HOME", os.environ.get("CNNLAB_HOME", str(Path.home() / ".cnnlab")))


# ---------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> predict.Predictor:
    """A one-epoch run on 3 colour classes at 12 px, trained once for the module."""
    root = tmp_path_factory.mktemp("fuzz-train") / "set"
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), tuple(v + i for v in colour)).save(root / f"c{c}/{i}.png")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNLAB_HOME", str(tmp_path_factory.mktemp("fuzz-home")))
    config = RunConfig(
        data=DataConfig(path=str(root), image_size=12),
        model=ModelConfig(channels=[4], head_units=0),
        train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
    )
    summary = train.fit(config)
    yield predict.Predictor.from_run(summary["run_id"])
    mp.undo()


@FUZZ
@given(blob=any_file)
def test_predictor_on_bytes(predictor: predict.Predictor, blob: bytes) -> None:
    try:
        [top] = predictor.predict([blob], k=2)
    except DataError:
        return
    assert len(top) == 2 and all(0.0 <= p <= 1.0 for _, p in top)


@settings(FUZZ, max_examples=150 * SCALE)
@given(blobs=st.lists(any_file, min_size=1, max_size=5))
def test_predictor_on_files_reports_each_bad_one(
    predictor: predict.Predictor, scratch: Path, blobs: list[bytes]
) -> None:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    for i, blob in enumerate(blobs):
        (folder / f"{i}.png").write_bytes(blob)
    rows = predictor.predict_files([folder], k=1)  # never raises: a bad file gets an error
    assert len(rows) == len(blobs)
    assert all(("top" in r) != ("error" in r) for r in rows)


# ---------------------------------------------------------------- zips
def _zip_seed() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for c in ("a", "b"):
            for i in range(2):
                zf.writestr(f"set/{c}/{i}.png", SEEDS["png-rgb"])
        zf.writestr("set/a/notes.txt", b"hello " * 50)
    return buf.getvalue()


@settings(FUZZ, max_examples=300 * SCALE)
@given(blob=mutated({"zip": _zip_seed()}))
def test_mutated_zip_upload_extracts_or_raises_data_error(scratch: Path, blob: bytes) -> None:
    os.environ["CNNLAB_HOME"] = str(Path(tempfile.mkdtemp(dir=scratch)))
    try:
        folder = archive.save_uploaded_zip(blob, "fuzz.zip")
    except DataError:
        return
    base = folder.resolve()
    assert all(base in p.resolve().parents for p in folder.rglob("*"))
