# One job per trained method: SPO / MSPO (or a baseline trainer) on its base model, LoRA in the diffusers format. A job
# given N > 1 GPUs runs `accelerate launch` with N processes (data parallel) inside its one job.
# Checkpoints live outside the output folder: Snakemake deletes a failed job's outputs, and a
# rerun must find the checkpoints to resume from.


rule train:
    input:
        unpack(train_inputs),
    output:
        directory(layout.train_dir("{method}")),
    params:
        fingerprint=train_fingerprint,
        checkpoints=train_checkpoints,
        launcher=train_launcher,
        # offline trainers (diffusion-dpo): their pair folder from train_inputs
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
    log:
        layout.log_file("train", "{method}"),
    benchmark:
        layout.benchmark_file("train", "{method}")
    # The trainings are the DAG's longest jobs: start each as soon as it can run, so that none is
    # left running alone on one core at the end (tiny DAG on 2 cores: a 40 s one-job tail before).
    priority: 10
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    shell:
        "{PYTHON} -m {params.launcher}spo train --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --checkpoints {params.checkpoints} --models-root {MODELS_ROOT} --threads {threads}"
        " {params.pairs} --out {output} > {log} 2>&1"


rule fetch_prompts:
    output:
        layout.fetched_prompts("{checksum}"),
    params:
        prompt_set=fetch_prompt_set,
    log:
        layout.log_file("fetch_prompts", "{checksum}"),
    benchmark:
        layout.benchmark_file("fetch_prompts", "{checksum}")
    shell:
        "{PYTHON} -m spo fetch-prompts --config {RESOLVED_CONFIG} --prompt-set {params.prompt_set}"
        " --out {output} > {log} 2>&1"
