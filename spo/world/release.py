"""Assemble the pretrained parts into the shipped layout, write its manifest, and compare it with
the world already shipped (``data/tiny-world``): does this run reproduce its hashes?

    <release>/sd15/        StableDiffusionPipeline.save_pretrained (VAE, CLIP-a text encoder, UNet)
    <release>/sdxl/        StableDiffusionXLPipeline.save_pretrained (same VAE, CLIP-a and CLIP-b text encoders)
    <release>/pickscore/   model/ (CLIPModel) and processor/ (tokenizer, preprocessor_config.json)
    <release>/sdxl-half-way/unet/   the SDXL UNet's EMA half-way through training, fp16 (LoRA transfer)
    <release>/manifest.json
    <release>/../reproduction.json   this build's hashes against the shipped manifest's
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from spo.world.manifest import FORMAT, MANIFEST, VERSION, file_table, link_table, read_manifest
from spo.world.grammar import WorldSpec
from spo.world.settings import PretrainSettings

COMMAND = "snakemake --cores 2 pretrain_tiny"
SHARED_COMPONENTS = ("vae", "text_encoder")
SHIPPED_ROOT = "data/tiny-world"


def release(spec: WorldSpec, ps: PretrainSettings, parts_root: str | Path, out_dir: str | Path,
            shipped_root: str | Path = SHIPPED_ROOT) -> dict:
    from spo.environment import summary
    from spo.expected import cpu_family
    from spo.io import _git_commit, atomic_path, write_json_atomic

    parts_root, out_dir = Path(parts_root), Path(out_dir)
    records = {}
    for part in ("vae", "clip-a", "clip-b", "pickscore", "sd15", "sdxl"):
        path = parts_root / part / "pretrain.json"
        if path.is_file():
            record = json.loads(path.read_text())["resolved"]
            provenance = json.loads(path.read_text())
            records[part] = {"command": " ".join(record["argv"]).replace(record["argv"][0], "python -m spo", 1),
                             "seconds": record.get("seconds"), "final_loss": record.get("final_loss"),
                             "git_commit": provenance.get("git_commit")}
    with atomic_path(out_dir, is_dir=True) as tmp:
        skip = shutil.ignore_patterns("pretrain.json", "half-way", ".snakemake*")
        for part in ("sd15", "sdxl", "pickscore"):
            shutil.copytree(parts_root / part, tmp / part, ignore=skip)
        write_fresh_tokenizers(tmp)
        # the SDXL UNet half-way through its training (fp16): the LoRA-transfer figure's second model
        shutil.copytree(parts_root / "sdxl" / "half-way", tmp / "sdxl-half-way", ignore=skip)
        # The VAE and the first text encoder are the same weights in both pipelines (trained once,
        # as SDXL reuses CLIP ViT-L's text tower): stored once, the SDXL folder links to them.
        for component in SHARED_COMPONENTS:
            if file_table(tmp / "sd15" / component) == file_table(tmp / "sdxl" / component):
                shutil.rmtree(tmp / "sdxl" / component)
                (tmp / "sdxl" / component).symlink_to(Path("..") / "sd15" / component)
        manifest = {"format": FORMAT, "version": VERSION, "command": COMMAND,
                    "git_commit": _git_commit(), "environment": summary(), "cpu": cpu_family(),
                    "seed": ps.seed, "config": {"world": _plain(asdict(spec)), "pretrain": _plain(asdict(ps))},
                    "parts": records, "files": file_table(tmp), "links": link_table(tmp)}
        write_json_atomic(tmp / MANIFEST, manifest)
    report = compare_with_shipped(manifest, shipped_root)
    write_json_atomic(out_dir.parent / "reproduction.json", report)
    return report


# Every tokenizer folder of the release and the pad token of its tokenizer (SDXL's second text
# tower pads with "!", as the real one does).
TOKENIZER_FOLDERS = {"sd15/tokenizer": "<|endoftext|>", "sdxl/tokenizer": "<|endoftext|>",
                     "sdxl/tokenizer_2": "!", "pickscore/processor": "<|endoftext|>"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json")


def write_fresh_tokenizers(root: Path) -> None:
    """Write every tokenizer of the release from a freshly built one that was never called.

    A tokenizer saved after use records its last call: tokenizer.json's "padding" / "truncation"
    and padding keys in tokenizer_config.json (and from_pretrained's arguments). A part trained in
    one process and a part resumed from its checkpoint (nothing called) would therefore ship
    different files for the same tokenizer; measured: a from-scratch rebuild reproduced every
    weight file's sha256 and differed in two tokenizer files. Every call site passes its padding
    and truncation explicitly, so ids are unchanged (tests/world/test_pretrain.py).
    """
    from spo.world.tokenizer import grammar_tokenizer

    for folder, pad_token in TOKENIZER_FOLDERS.items():
        target = root / folder
        for name in TOKENIZER_FILES:
            (target / name).unlink(missing_ok=True)
        grammar_tokenizer(pad_token=pad_token).save_pretrained(str(target))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def compare_with_shipped(manifest: dict, shipped_root: str | Path) -> dict:
    """Which files of this build equal the shipped ones (by sha256), which differ."""
    try:
        shipped = read_manifest(shipped_root)
    except Exception as exc:  # noqa: BLE001 - no shipped world yet: nothing to compare with
        return {"shipped": str(shipped_root), "compared": False, "why": str(exc)}
    ours, theirs = manifest["files"], shipped["files"]
    ours_links, theirs_links = manifest.get("links", {}), shipped.get("links", {})
    same = sorted(n for n in ours if n in theirs and ours[n]["sha256"] == theirs[n]["sha256"])
    differ = sorted(n for n in ours if n in theirs and ours[n]["sha256"] != theirs[n]["sha256"])
    return {"shipped": str(shipped_root), "compared": True,
            "identical": not differ and set(ours) == set(theirs) and ours_links == theirs_links,
            "same": same, "differ": differ,
            "only_here": sorted(set(ours) - set(theirs)), "only_shipped": sorted(set(theirs) - set(ours))}
