# The tiny world's pretraining (issue 16; spo/world): not part of the default target, because its
# result ships with the repository (data/tiny-world/). `snakemake --cores 2 pretrain_tiny` rebuilds
# every part, assembles the release with its manifest, and writes a report of whether the build
# reproduces the shipped files' sha256 hashes (paths: the pretrain_* functions of spo/layout.py).
# Parts that do not depend on each other run in parallel (2 cores, alone: 46 min 50 s measured,
# every shipped hash reproduced: docs/tiny-world.md).
# clip-b waits for clip-a although it does not read it: on 2 cores the VAE (the longest first
# part) then starts at once, beside clip-a, instead of after whichever CLIP finishes first.
PRETRAIN_NEEDS = {"vae": [], "clip-a": [], "clip-b": ["clip-a"], "pickscore": ["clip-b"],
                  "sd15": ["vae", "clip-a"], "sdxl": ["vae", "clip-a", "clip-b"]}


rule pretrain_tiny_part:
    input:
        lambda wildcards: [layout.pretrain_part_dir(p) for p in PRETRAIN_NEEDS[wildcards.part]],
    output:
        directory(layout.pretrain_part_dir("{part}")),
    wildcard_constraints:
        part="|".join(PRETRAIN_NEEDS),
    params:
        fingerprint=pretrain_fingerprint,
        checkpoints=pretrain_checkpoints,
        parts=lambda wildcards, output: Path(output[0]).parent,
    log:
        layout.log_file("pretrain_tiny", "{part}"),
    benchmark:
        layout.benchmark_file("pretrain_tiny", "{part}")
    threads: job_threads("pretrain_tiny")
    resources:
        **job_resources("pretrain_tiny"),
    shell:
        "{PYTHON} -m spo pretrain-tiny --config {RESOLVED_CONFIG} --part {wildcards.part}"
        " --parts {params.parts} --checkpoints {params.checkpoints} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule pretrain_tiny:
    input:
        [layout.pretrain_part_dir(p) for p in PRETRAIN_NEEDS],
    output:
        release=directory(layout.pretrain_release_dir()),
        report=layout.pretrain_reproduction_file(),
    params:
        fingerprint=pretrain_fingerprint,
        parts=lambda wildcards, input: Path(input[0]).parent,
    log:
        layout.log_file("pretrain_tiny", "release"),
    benchmark:
        layout.benchmark_file("pretrain_tiny", "release")
    localrule: True
    shell:
        "{PYTHON} -m spo pretrain-tiny --config {RESOLVED_CONFIG} --part release"
        " --parts {params.parts} --out {output.release} > {log} 2>&1"
