"""The released checkpoints' layouts, as tiny stand-ins, through the one loader (issue #6).

Each tiny checkpoint is written exactly as its released repository is laid out (PAPER.md §5 and the
MaPO addendum) and read with a `path` source through `load_method_pipeline`, the code path the
hub ids of config/released.yaml take:

* merged pipeline (SPO-Diffusion-Models/SPO-*_4k-p_10ep): `save_pretrained` of a whole pipeline;
* UNet in `unet/` (mhdang/dpo-*-text2image-v1); UNet at the folder root (mapo-t2i/mapo-beta);
* LoRA file (SPO-*_LoRA): the official train_spo.py writes it with
  `save_lora_weights(unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))`
  (RockeyCoss/SPO@27a8642), i.e. keys `unet.<module>.lora.down|up.weight`, rank 4 on
  to_q/to_k/to_v/to_out.0, under the released file name.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spo.config import ConfigError, load_config, validate_config
from spo.models.pipelines import LoraMismatchError, load_method_pipeline, lora_module_of
from spo.models.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline

FAMILY_MODEL = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl"}
TINY = {"sd15": tiny_sd15_pipeline, "sdxl": tiny_sdxl_pipeline}
LORA_FILES = {"sd15": "spo-sd-v1-5_4k-p_10ep_lora_diffusers.safetensors",
              "sdxl": "spo_sdxl_10ep_4k-data_lora_diffusers.safetensors"}


def _images(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt=["a red car"], generator=[generator], num_inference_steps=2,
                guidance_scale=5.0, height=32, width=32, output_type="np").images


def _assert_state_equal(module, reference):
    got = module.state_dict()
    for name, param in reference.state_dict().items():
        assert torch.equal(got[name], param), name


def _spo_lora(family, folder, seed=7):
    """A LoRA in the SPO release's layout and file name, with non-zero up weights (a trained one)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from spo.training.lora import attach_lora

    unet = TINY[family](seed).unet
    attach_lora(unet, rank=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    cls = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[family]
    cls.save_lora_weights(str(folder), unet_lora_layers=layers, weight_name=LORA_FILES[family],
                          safe_serialization=True)
    return folder / LORA_FILES[family]


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {family: _spo_lora(family, root / family) for family in ("sd15", "sdxl")}


def _with_method(config, name, spec):
    config = copy.deepcopy(config)
    config["methods"][name] = spec
    validate_config(config)  # the entry must be a valid config row, as in released.yaml
    return config


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_merged_pipeline_is_a_model_of_its_own(tiny_config, tiny_models, tmp_path, family):
    merged = TINY[family](seed=42)
    merged.save_pretrained(tmp_path / "merged", safe_serialization=True)
    config = copy.deepcopy(tiny_config)
    config["models"]["merged"] = {"family": family, "source": {"path": str(tmp_path / "merged")}}
    config = _with_method(config, "merged-row", {"model": "merged"})
    pipe = load_method_pipeline(config, "merged-row", models_root=tiny_models)
    base = load_method_pipeline(config, f"{FAMILY_MODEL[family]}-base", models_root=tiny_models)
    _assert_state_equal(pipe.unet, merged.unet)
    _assert_state_equal(pipe.text_encoder, merged.text_encoder)
    assert not torch.equal(next(iter(pipe.unet.parameters())), next(iter(base.unet.parameters())))


@pytest.mark.parametrize("family, layout", [("sd15", "subfolder"), ("sdxl", "subfolder"),
                                            ("sdxl", "root")])
def test_unet_replacement_in_subfolder_or_at_root(tiny_config, tiny_models, tmp_path, family, layout):
    """mhdang/dpo-*: `unet/` of a pipeline-layout repository; mapo-t2i/mapo-beta: the repo root."""
    other = TINY[family](seed=99).unet
    if layout == "subfolder":
        other.save_pretrained(tmp_path / "repo" / "unet")
        source = {"path": str(tmp_path / "repo"), "subfolder": "unet"}
    else:
        other.save_pretrained(tmp_path / "repo")
        source = {"path": str(tmp_path / "repo")}
    assert (tmp_path / "repo" / ("unet" if layout == "subfolder" else "") / "config.json").is_file()
    config = _with_method(tiny_config, "swapped", {"model": FAMILY_MODEL[family], "unet": source})
    pipe = load_method_pipeline(config, "swapped", models_root=tiny_models)
    base = load_method_pipeline(config, f"{FAMILY_MODEL[family]}-base", models_root=tiny_models)
    _assert_state_equal(pipe.unet, other)
    _assert_state_equal(pipe.vae, base.vae)  # only the UNet is replaced
    assert not np.allclose(_images(pipe), _images(base))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_spo_lora_file_is_applied(tiny_config, tiny_models, lora_files, family):
    path = lora_files[family]
    keys = list(load_file(str(path)))
    assert keys and all(k.startswith("unet.") and k.endswith(("lora.down.weight", "lora.up.weight"))
                        for k in keys)  # the SPO release's layout
    # a folder with `file:` (as the hub repository) and the file itself
    for name, spec in (("lora-folder", {"path": str(path.parent), "file": path.name}),
                       ("lora-file", {"path": str(path)})):
        config = _with_method(tiny_config, name, {"model": FAMILY_MODEL[family], "lora": spec})
        pipe = load_method_pipeline(config, name, models_root=tiny_models)
        saved = load_file(str(path))
        for key, tensor in saved.items():
            if key.endswith("lora.up.weight"):
                component, module = lora_module_of(key)
                layer = pipe.unet.get_submodule(module)
                assert torch.equal(layer.lora_B[name].weight, tensor), key
    base = load_method_pipeline(config, f"{FAMILY_MODEL[family]}-base", models_root=tiny_models)
    assert not np.allclose(_images(pipe), _images(base))


def test_lora_with_text_encoder_keys_reaches_the_text_encoder(tiny_config, tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from spo.training.lora import attach_lora

    donor = tiny_sd15_pipeline(seed=3)
    attach_lora(donor.unet, rank=2)
    # peft directly: transformers' add_adapter wants a newer peft than the pinned one
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj"]),
                            donor.text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        str(tmp_path), weight_name="te.safetensors", safe_serialization=True,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(donor.text_encoder)))
    config = _with_method(tiny_config, "te", {"model": "tiny-sd15",
                                              "lora": {"path": str(tmp_path / "te.safetensors")}})
    pipe = load_method_pipeline(config, "te", models_root=tiny_models)
    layer = pipe.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    assert "te" in layer.lora_A


def _rewrite(path, out, rename):
    save_file({rename(k): v for k, v in load_file(str(path)).items()}, str(out))
    return out


@pytest.mark.parametrize("case", ["garbage", "no-lora-keys", "other-layout", "other-family"])
def test_lora_that_changes_nothing_is_an_error(tiny_config, tiny_models, lora_files, tmp_path, case):
    """RockeyCoss/SPO#25 'no modules changed' is an error naming the method, file and keys."""
    sd15 = lora_files["sd15"]
    family = "sd15"
    if case == "garbage":  # LoRA-looking keys with no known prefix: diffusers would load nothing
        path = _rewrite(sd15, tmp_path / "garbage.safetensors",
                        lambda k: "model.diffusion." + k.replace(".", "_").replace("_lora_", ".lora."))
    elif case == "no-lora-keys":
        path = _rewrite(sd15, tmp_path / "plain.safetensors", lambda k: k.replace("lora", "w"))
    elif case == "other-layout":  # module names of another UNet layout: only part would load
        path = _rewrite(sd15, tmp_path / "other.safetensors",
                        lambda k: k.replace("down_blocks.1.", "down_blocks.3."))
    else:  # the SDXL LoRA on an SD-1.5 model
        path = lora_files["sdxl"]
    config = _with_method(tiny_config, "bad-lora", {"model": FAMILY_MODEL[family],
                                                    "lora": {"path": str(path)}})
    with pytest.raises(LoraMismatchError) as err:
        load_method_pipeline(config, "bad-lora", models_root=tiny_models)
    msg = str(err.value)
    assert "methods.bad-lora.lora" in msg and str(path) in msg
    if case == "garbage":
        assert "changes no module" in msg and "model.diffusion.unet_down_blocks_1" in msg
    if case == "other-layout":
        assert "match no module" in msg and "down_blocks.3." in msg
    if case == "other-family":
        assert "size mismatch" in msg and "SD-1.5 LoRA on an sd15 model" in msg


@pytest.mark.parametrize("key, spec", [
    ("methods.r.unet", {"model": "tiny-sdxl", "unet": {"id": "mapo-t2i/mapo-beta"}}),
    ("methods.r.unet", {"model": "tiny-sdxl",
                        "unet": {"id": "mhdang/dpo-sdxl-text2image-v1", "revision": "main",
                                 "subfolder": "unet"}}),
    ("methods.r.lora", {"model": "tiny-sd15",
                        "lora": {"id": "SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep_LoRA",
                                 "file": LORA_FILES["sd15"]}}),
])
def test_unpinned_hub_id_names_key_id_and_fix(tiny_config, key, spec):
    config = copy.deepcopy(tiny_config)
    config["methods"]["r"] = spec
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    part = spec.get("unet") or spec.get("lora")
    msg = str(err.value)
    assert f"config key '{key}'" in msg and part["id"] in msg
    assert "revision: <40-hex commit>" in msg and "model_info" in msg
    if "revision" in part:
        assert "'main', not a full commit hash" in msg


def test_unpinned_merged_pipeline_names_models_key(tiny_config):
    config = copy.deepcopy(tiny_config)
    config["models"]["spo"] = {"family": "sdxl", "source": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep"}}
    with pytest.raises(ConfigError, match=r"config key 'models.spo.source' names hub id "
                                          r"'SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep' with no `revision:`"):
        validate_config(config)


def test_released_rows_pin_every_part(repo_root):
    """Every row of config/released.yaml: explicit CFG, a paper row, hub parts at full commits."""
    import yaml

    rows = yaml.safe_load((repo_root / "config/released.yaml").read_text())["methods"]
    config = load_config([repo_root / "config/released.yaml"], root=repo_root)
    for name in rows:
        method = config["methods"][name]
        assert method["guidance_scale"] == 5.0 and method["paper"], name
        model = config["models"][method["model"]]
        for part in (model["source"], model.get("vae"), method.get("unet"), method.get("lora")):
            if part and "id" in part:
                assert len(part["revision"]) == 40 and int(part["revision"], 16) >= 0, (name, part)
    assert config["models"]["sdxl"]["vae"]["id"] == "madebyollin/sdxl-vae-fp16-fix"
    assert config["methods"]["sdxl-mapo"]["unet"].get("subfolder") is None  # UNet at the root
