"""The raw datasets: where each file lives under `data/raw/`, its sha256, licence, and how `seq2seq data fetch`
gets it (copied from a local folder laid out like `../shared/data`, or downloaded from its public URL).

Online, the original files are downloaded, checked against the upstream sha256, and the shared copy is
derived from them by removing the held-out sample with the rule in each SOURCE.md (bucket(text) < K); the
result must then match the shared copy's sha256, so both routes give byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.splits import bucket
from seq2seq.files import sha256_file

FETCH_HINT = "run `seq2seq data fetch --from ../shared/data` (or `seq2seq data fetch` when online)"


@dataclass(frozen=True)
class Download:
    url: str
    sha256: str


@dataclass(frozen=True)
class RawSource:
    name: str
    files: dict[str, str]  # path under the raw dir -> sha256 of the shared copy
    downloads: tuple[Download, ...]
    licence: str
    citation: str


_CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
_DAILYDIALOG = (
    "https://raw.githubusercontent.com/Ls-Dai/Deep-Reinforcement-Learning-for-Dialogue-Generation-in-PyTorch/"
    "bae51b16e3e8c0ce4ffd70b75ecfc40fbeb8e7ee/data"
)

RAW_SOURCES: dict[str, RawSource] = {
    source.name: source
    for source in [
        RawSource(
            name="tinyshakespeare",
            files={"tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
            downloads=(
                Download(
                    f"{_CHAR_RNN}/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                ),
            ),
            licence="public domain (Shakespeare's plays)",
            citation="Karpathy, char-rnn (2015), data/tinyshakespeare/input.txt",
        ),
        RawSource(
            name="sarcasm_headlines",
            files={
                "sarcasm_headlines/Sarcasm_Headlines_Dataset.json": (
                    "510c330e6a0a308fffad3b526a0394453306dfaa018a1fece50bab14512f3889"
                )
            },
            downloads=(
                Download(
                    "https://raw.githubusercontent.com/chandraputomo/dataset/"
                    "c5433bbf15bed843aa3f87c2e8e9f9d03c98b322/Sarcasm_Headlines_Dataset.json.zip",
                    "",  # the zip is not pinned; the JSON inside it is (see _derive_sarcasm_headlines)
                ),
            ),
            licence="no licence stated; research use with attribution",
            citation='Misra & Arora, "Sarcasm Detection using News Headlines Dataset", AI Open 4 (2023)',
        ),
        RawSource(
            name="jokes_qa",
            files={"jokes_qa/reddit.csv": "86a7ab85a7b5c5caa1c7cb494e4044f52601c06fee8933931ae423bbff2e0609"},
            downloads=(
                Download(
                    "https://raw.githubusercontent.com/bfinan/joke-dataset/"
                    "bf4a61e97cfd0628f0ce1661ca598dfa99ecdae2/sources/reddit.csv",
                    "2d77f167be3657ece7258c1cc5f6de84b8a5893e9a8697df4affafa6408c6739",
                ),
            ),
            licence="no licence; Reddit posts, research use only",
            citation='bfinan, "Jokes: Question and Answer" (Kaggle / GitHub bfinan/joke-dataset, 2018)',
        ),
        RawSource(
            name="humor_colbert",
            files={"humor_colbert/dev.csv": "fcbbcbd3a124a89c01f53d0aa80db95b8576aa3f3f86bb86837d7650be5aa20a"},
            downloads=(
                Download(
                    "https://raw.githubusercontent.com/Moradnejad/"
                    "ColBERT-Using-BERT-Sentence-Embedding-for-Humor-Detection/"
                    "1cb05ec1476e0fb21f1a624957dbc49b8388fc23/Data/dev.csv",
                    "abe1435643d449c5ee6fe5ca3b18e0137bdf923330564deadc1102b4e56a20c0",
                ),
            ),
            licence="MIT",
            citation=(
                "Annamoradnejad & Zoghi, ColBERT: Using BERT sentence embedding in parallel neural networks "
                "for computational humor, Expert Systems with Applications 249 (2024) 123685"
            ),
        ),
        RawSource(
            name="dailydialog",
            files={
                "dailydialog/train/dialogues_train.txt": (
                    "7b252e27d42cbf4edab9cbf0bc551201becffd0bee400bf70db0efb831f4c992"
                ),
                "dailydialog/train/dialogues_act_train.txt": (
                    "10c2a98ebce613936dc45061dff904c9c1b53fde3f437f407e390a089ebadacb"
                ),
                "dailydialog/train/dialogues_emotion_train.txt": (
                    "cdf405b1c355da5dbf3ff24549549afb404a73039ef2fc64da727f29f039afcd"
                ),
                "dailydialog/validation/dialogues_validation.txt": (
                    "a1c580a263b4dfe95046878ede94a8efe1c0b9e08b8f0e48c68f533d463ce511"
                ),
                "dailydialog/validation/dialogues_act_validation.txt": (
                    "8d44aff8973b6a1ae1a1c0aea1c8bb308b48606527470dfbd08c48ead2c28f97"
                ),
                "dailydialog/validation/dialogues_emotion_validation.txt": (
                    "ba85165a5a472a1dd6274304c470e6b204ffbf47775b0d9a0363c3d98ece9925"
                ),
                "dailydialog/test/dialogues_test.txt": (
                    "c96ef28a7b2e9261ef0e3e1d56a3c6904eb515ccdab5866e3325a3fffb171848"
                ),
                "dailydialog/test/dialogues_act_test.txt": (
                    "15f80ad11a3a29b9ef4b19ec5779fe190bfe77861e6611e4f418bf144a5e93b9"
                ),
                "dailydialog/test/dialogues_emotion_test.txt": (
                    "c276a6db216bfcfcd81ad863b6efc1a28e6209f86c4107bb62bf8c59caf622bd"
                ),
            },
            downloads=(
                Download(
                    f"{_DAILYDIALOG}/train.zip", "6191257f8250da0e045bfd1d017645e15b2358df975ec4c5c431a5a1f99662a4"
                ),
                Download(
                    f"{_DAILYDIALOG}/validation.zip",
                    "f068cf7526a56ab5f26e99b74ce9edbc2766f7b060a3c6cef035920b0dd28153",
                ),
                Download(
                    f"{_DAILYDIALOG}/test.zip", "5f9526a5ce4b8af4ca237aa3ff38cbf03becbc596c70b0974d7f5f9af2ea0615"
                ),
            ),
            licence="CC BY-NC-SA 4.0 (non-commercial, share-alike)",
            citation=(
                "Li, Su, Shen, Li, Cao & Niu, DailyDialog: A Manually Labelled Multi-turn Dialogue Dataset, IJCNLP 2017"
            ),
        ),
    ]
}

# The shared copy leaves out items with bucket(text) < K (SOURCE.md, "Split rule").
HELD_OUT_K = {"sarcasm_headlines": 4, "jokes_qa": 4, "humor_colbert": 4, "dailydialog": 10}
SARCASM_JSON_SHA256 = "a0ef80faee87588f307aceb44eba562bc5c6b6f655c96c91677ae2fcc554ac51"


def raw_file(raw_dir: Path, relative: str) -> Path:
    """Path of a raw file; FileNotFoundError naming it and the command that gets it if it is missing."""
    path = Path(raw_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {FETCH_HINT}")
    return path


def resolve_sources(names: list[str] | None) -> list[RawSource]:
    if not names:
        return list(RAW_SOURCES.values())
    unknown = [name for name in names if name not in RAW_SOURCES]
    if unknown:
        raise ValueError(f"unknown source {unknown[0]!r} (known: {', '.join(RAW_SOURCES)})")
    return [RAW_SOURCES[name] for name in names]


def fetch_from_directory(
    source_dir: Path, raw_dir: Path, sources: list[RawSource], log: Callable[[str], None] = print
) -> None:
    """Copy each source's files from `source_dir` (laid out like ../shared/data) into `raw_dir`, checking
    sha256 before copying. Files already in `raw_dir` with the right hash are left alone."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"--from {source_dir}: no such directory")
    for source in sources:
        for relative, expected in source.files.items():
            destination = Path(raw_dir) / relative
            if destination.is_file() and sha256_file(destination) == expected:
                log(f"  ok      {destination} (already present)")
                continue
            origin = source_dir / relative
            if not origin.is_file():
                raise FileNotFoundError(f"{origin} not found (expected {source.name}'s files under --from)")
            _check_sha256(origin, expected)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, destination)
            log(f"  copied  {destination}")
        notes = source_dir / source.name / "SOURCE.md"
        if notes.is_file():
            shutil.copyfile(notes, Path(raw_dir) / source.name / "SOURCE.md")
        log(f"{source.name}: {source.licence}")


def fetch_online(raw_dir: Path, sources: list[RawSource], log: Callable[[str], None] = print) -> None:
    """Download each source from its public URL, check sha256, derive the shared copy and check it too."""
    for source in sources:
        if all(
            (Path(raw_dir) / rel).is_file() and sha256_file(Path(raw_dir) / rel) == sha
            for rel, sha in source.files.items()
        ):
            log(f"{source.name}: already present")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            downloaded = []
            for download in source.downloads:
                path = Path(tmp) / download.url.rsplit("/", 1)[-1]
                log(f"  downloading {download.url}")
                try:
                    with urllib.request.urlopen(download.url, timeout=60) as response, path.open("wb") as out:
                        shutil.copyfileobj(response, out)
                except (urllib.error.URLError, TimeoutError) as error:
                    raise ValueError(
                        f"could not download {download.url} ({error}); offline, copy the files from a local folder "
                        "with `seq2seq data fetch --from ../shared/data`"
                    ) from None
                if download.sha256:
                    _check_sha256(path, download.sha256)
                downloaded.append(path)
            outputs = _DERIVE[source.name](downloaded)
        for relative, data in outputs.items():
            expected = source.files[relative]
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise ValueError(
                    f"{source.name}: derived {relative} has sha256 {actual}, expected {expected}; "
                    "the upstream file changed, use `seq2seq data fetch --from ../shared/data`"
                )
            destination = Path(raw_dir) / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
            log(f"  wrote   {destination}")
        log(f"{source.name}: {source.licence}")


def _check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 is {actual}, expected {expected} (documented in SOURCE.md)")


# ---- deriving the shared copy from the original files (the held-out rule of SOURCE.md) ----


def remove_held_out_lines(data: bytes, key: Callable[[str], str], k: int) -> tuple[bytes, list[bool]]:
    """Drop lines whose key text falls in the held-out buckets; line endings are kept byte for byte.
    Returns the kept bytes and, per line, whether it was kept (to filter line-aligned label files)."""
    lines = data.decode("utf-8").splitlines(keepends=True)
    kept = [bucket(key(line)) >= k for line in lines]
    return "".join(line for line, keep in zip(lines, kept, strict=True) if keep).encode("utf-8"), kept


def remove_held_out_csv(data: bytes, key: Callable[[list[str]], str], k: int) -> bytes:
    """Drop CSV rows in the held-out buckets and rewrite the file as the shared copy was written."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    writer.writerows(row for row in rows[1:] if bucket(key(row)) >= k)
    return out.getvalue().encode("utf-8")


def dailydialog_key(line: str) -> str:
    return line.replace("__eou__", " ")


def _derive_tinyshakespeare(paths: list[Path]) -> dict[str, bytes]:
    return {"tinyshakespeare/input.txt": paths[0].read_bytes()}


def _derive_sarcasm_headlines(paths: list[Path]) -> dict[str, bytes]:
    with zipfile.ZipFile(paths[0]) as archive:
        members = {Path(name).name: name for name in archive.namelist()}
        data = archive.read(members["Sarcasm_Headlines_Dataset.json"])
    if hashlib.sha256(data).hexdigest() != SARCASM_JSON_SHA256:
        raise ValueError(f"{paths[0]}: Sarcasm_Headlines_Dataset.json does not match sha256 {SARCASM_JSON_SHA256}")
    kept, _ = remove_held_out_lines(data, lambda line: json.loads(line)["headline"], HELD_OUT_K["sarcasm_headlines"])
    return {"sarcasm_headlines/Sarcasm_Headlines_Dataset.json": kept}


def _derive_jokes_qa(paths: list[Path]) -> dict[str, bytes]:
    data = remove_held_out_csv(paths[0].read_bytes(), lambda row: row[0] + " " + row[1], HELD_OUT_K["jokes_qa"])
    return {"jokes_qa/reddit.csv": data}


def _derive_humor_colbert(paths: list[Path]) -> dict[str, bytes]:
    data = remove_held_out_csv(paths[0].read_bytes(), lambda row: row[0], HELD_OUT_K["humor_colbert"])
    return {"humor_colbert/dev.csv": data}


def _derive_dailydialog(paths: list[Path]) -> dict[str, bytes]:
    outputs = {}
    for path, split in zip(paths, ("train", "validation", "test"), strict=True):
        with zipfile.ZipFile(path) as archive:
            members = {Path(name).name: name for name in archive.namelist()}
            dialogues = archive.read(members[f"dialogues_{split}.txt"])
            kept_dialogues, kept = remove_held_out_lines(dialogues, dailydialog_key, HELD_OUT_K["dailydialog"])
            outputs[f"dailydialog/{split}/dialogues_{split}.txt"] = kept_dialogues
            for labels in ("act", "emotion"):
                lines = archive.read(members[f"dialogues_{labels}_{split}.txt"]).decode("utf-8")
                lines = lines.splitlines(keepends=True)
                if len(lines) != len(kept):
                    raise ValueError(f"{path}: {labels} labels are not line-aligned with the dialogues")
                data = "".join(line for line, keep in zip(lines, kept, strict=True) if keep).encode("utf-8")
                outputs[f"dailydialog/{split}/dialogues_{labels}_{split}.txt"] = data
    return outputs


_DERIVE: dict[str, Callable[[list[Path]], dict[str, bytes]]] = {
    "tinyshakespeare": _derive_tinyshakespeare,
    "sarcasm_headlines": _derive_sarcasm_headlines,
    "jokes_qa": _derive_jokes_qa,
    "humor_colbert": _derive_humor_colbert,
    "dailydialog": _derive_dailydialog,
}
