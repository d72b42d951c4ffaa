# The step-aware preference model (issue 4): pairs -> (latent cache) -> train-spm per run.
# Paths: spo/layout.py. Every run in `spm.runs` is a target of `rule all` (spm_files()).
# Functions: workflow/rules/spm_common.smk.


rule spm_tiny_pickscore:
    output:
        directory(layout.pickscore_init_dir()),
    params:
        fingerprint=lambda wildcards: stable_hash(_spm()["pickscore"]),
    log:
        layout.log_file("spm_tiny_pickscore"),
    benchmark:
        layout.benchmark_file("spm_tiny_pickscore")
    threads: 1
    shell:
        "{PYTHON} -m spo tiny-model --config {RESOLVED_CONFIG} --spm-pickscore"
        " --threads {threads} --out {output} > {log} 2>&1"


rule spm_pairs:
    input:
        unpack(spm_pairs_inputs),
    output:
        directory(layout.spm_pairs_dir("{dataset}", "{split}")),
    wildcard_constraints:
        split="train|validation",
    params:
        fingerprint=spm_data_fingerprint,
    log:
        layout.log_file("spm_pairs", "{dataset}/{split}"),
    benchmark:
        layout.benchmark_file("spm_pairs", "{dataset}/{split}")
    threads: 1
    shell:
        "{PYTHON} -m spo spm-pairs --config {RESOLVED_CONFIG} --dataset {wildcards.dataset}"
        " --split {wildcards.split} --models-root {MODELS_ROOT} --threads {threads}"
        " --out {output} > {log} 2>&1"


# Encodes each image once: every SPM variant and every rerun reuses the latents. Per pairs file a
# <stem>.latents.npy (n, 2, C, h, w) that train-spm memory-maps, + <stem>.pair_id.parquet.
rule spm_latents:
    input:
        unpack(spm_latents_inputs),
    output:
        directory(layout.spm_latents_dir("{dataset}", "{split}", "{model}")),
    wildcard_constraints:
        split="train|validation",
    params:
        fingerprint=model_fingerprint,
        resolution=spm_latent_resolution,
    log:
        layout.log_file("spm_latents", "{dataset}/{split}/{model}"),
    benchmark:
        layout.benchmark_file("spm_latents", "{dataset}/{split}/{model}")
    threads: job_threads("spm_latents")
    resources:
        **job_resources("spm_latents"),
    shell:
        "{PYTHON} -m spo spm-latents --config {RESOLVED_CONFIG} --pairs {input.pairs}"
        " --model {wildcards.model} {params.resolution} --models-root {MODELS_ROOT}"
        " --threads {threads} --out {output} > {log} 2>&1"


# Checkpoints (layout.spm_checkpoints) are not outputs: Snakemake keeps them when a job
# fails or is killed, and the rerun resumes from the newest one.
rule train_spm:
    input:
        unpack(train_spm_inputs),
    output:
        model=directory(layout.spm_model_dir("{run}")),
        validation=layout.spm_validation_csv("{run}"),
    params:
        fingerprint=spm_run_fingerprint,
        latents=train_spm_latent_args,
        checkpoints=spm_checkpoints,
        launcher=train_launcher,
    log:
        layout.log_file("train_spm", "{run}"),
    benchmark:
        layout.benchmark_file("train_spm", "{run}")
    priority: 10  # on the way to the SPO training that needs it (train.smk)
    threads: job_threads("train_spm")
    resources:
        **job_resources("train_spm"),
    shell:
        "{PYTHON} -m {params.launcher}spo train-spm --config {RESOLVED_CONFIG} --run {wildcards.run}"
        " --pairs {input.pairs} --val-pairs {input.val_pairs} {params.latents}"
        " --validation-csv {output.validation} --checkpoints {params.checkpoints}"
        " --models-root {MODELS_ROOT} --threads {threads} --out {output.model} > {log} 2>&1"
