"""The tiny world's prompt files, written from the grammar (``python -m spo world-prompts``).

    world_train.tsv     every training scene's caption (training prompts of SPO and the baselines,
                        the SPM's pair prompts)
    world_eval.tsv      every held-out combination's captions: the held-out evaluation prompts
    world_geneval.tsv   the held-out captions with GenEval-style ids (line index, 5 digits), and
    world_geneval/evaluation_metadata.jsonl   GenEval's metadata format, one line per prompt

A test regenerates them and compares with the committed files, so they never drift from the grammar.
"""

from __future__ import annotations

import json
from pathlib import Path

from spo.world.grammar import WorldSpec


def prompt_files(spec: WorldSpec) -> dict[str, str]:
    """{relative file name: text} of every world prompt file."""
    train = [s.caption for s in spec.scenes(held_out=False)]
    held = [s.caption for s in spec.scenes(held_out=True)]

    def tsv(prefix: str, captions: list[str], width: int = 3) -> str:
        rows = ["prompt_id\tprompt"] + [f"{prefix}{i:0{width}d}\t{c}" for i, c in enumerate(captions)]
        return "\n".join(rows) + "\n"

    metadata = "".join(json.dumps({"tag": "world", "prompt": c, "include": []}) + "\n" for c in held)
    return {"world_train.tsv": tsv("train", train), "world_eval.tsv": tsv("eval", held),
            "world_geneval.tsv": tsv("", held, 5),
            "world_geneval/evaluation_metadata.jsonl": metadata}


def write_prompt_files(spec: WorldSpec, out_dir: str | Path) -> list[Path]:
    from spo.io import write_text_atomic

    out = []
    for name, text in prompt_files(spec).items():
        path = Path(out_dir) / name
        write_text_atomic(path, text)
        out.append(path)
    return out
