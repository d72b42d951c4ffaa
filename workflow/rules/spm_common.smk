# Input functions and targets of workflow/rules/spm.smk (kept apart: snakemake --lint wants
# rules and functions in separate files). No ML logic here.


def _spm():
    return CONFIG.get("spm") or {"datasets": {}, "runs": {}, "pickscore": {}}


def _spm_run(run):
    return _spm()["runs"][run]


def _spm_dataset_is_tiny(dataset):
    return is_tiny(_spm()["datasets"][dataset])


def _used_spm_runs():
    """SPM runs an evaluated method trains with (the spm_accuracy figure asks for the others)."""
    runs = []
    for method in evaluated_methods(CONFIG):
        if not method_spec(CONFIG, method).trained:
            continue
        pref = train_settings(CONFIG, method).preference
        if pref.get("name") in ("spm", "spm-no-step") and pref.get("run") in _spm()["runs"]:
            runs.append(pref["run"])
    return list(dict.fromkeys(runs))


def spm_files():
    return [
        out
        for run in _used_spm_runs()
        for out in (layout.spm_model_dir(run), layout.spm_validation_csv(run))
    ]


def spm_pairs_inputs(wildcards):
    spec = _spm()["datasets"][wildcards.dataset]
    if is_tiny(spec):
        return {**model_inputs(spec["tiny"]["model"]), "prompts": spec["tiny"]["prompts"]}
    source = spec[wildcards.split]
    return {"parquet": source["path"]} if "path" in source else {}


def spm_latents_inputs(wildcards):
    return {"pairs": layout.spm_pairs_dir(wildcards.dataset, wildcards.split),
            **model_inputs(wildcards.model)}


def train_spm_inputs(wildcards):
    run = _spm_run(wildcards.run)
    data, model = run["data"], run["model"]
    out = {
        "pairs": layout.spm_pairs_dir(data, "train"),
        "val_pairs": layout.spm_pairs_dir(data, "validation"),
    }
    # Tiny pairs carry the generation's own latents; real pairs use the cached VAE latents.
    if not _spm_dataset_is_tiny(data):
        out["latents"] = layout.spm_latents_dir(data, "train", model)
        out["val_latents"] = layout.spm_latents_dir(data, "validation", model)
    out.update(model_inputs(model))
    if is_tiny(_spm()["pickscore"]["model"]):
        out["pickscore"] = layout.pickscore_init_dir()
    return out


def train_spm_latent_args(wildcards, input):
    if "latents" not in input.keys():
        return ""
    return f"--latents {input.latents} --val-latents {input.val_latents}"


def spm_latent_resolution(wildcards):
    from spo.spm.settings import spm_run

    runs = [spm_run(CONFIG, name) for name in _spm()["runs"]]
    runs = [r for r in runs if r.data == wildcards.dataset and r.model == wildcards.model]
    res = runs[0].resolution if runs else None
    return f"--resolution {res}" if res else ""


def spm_run_fingerprint(wildcards):
    run = _spm_run(wildcards.run)
    return stable_hash([run, CONFIG["models"][run["model"]], _spm()["datasets"][run["data"]],
                        _spm()["pickscore"], CONFIG["seed"], CONFIG["generation"]])


def spm_data_fingerprint(wildcards):
    return stable_hash([_spm()["datasets"][wildcards.dataset], CONFIG["seed"], CONFIG["generation"]])




def spm_checkpoints(wildcards):
    # Per fingerprint: a changed run or data set starts afresh instead of resuming stale state.
    return layout.spm_checkpoints(wildcards.run, spm_run_fingerprint(wildcards))
