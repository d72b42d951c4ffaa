"""Independent plain-torch implementations of the four published scorers, for parity tests.

They read the checkpoints in their *original* key layouts (HF CLIP, open_clip, BLIP/ImageReward) and
share no code with ``spo.metrics`` beyond the tokenizers. Preprocessing uses torchvision where the
reference code does (OpenAI CLIP, ImageReward, HPSv2) and a hand-written transformers-4.27 pipeline
for PickScore. Text is encoded one prompt at a time without padding (CLIP) or with the reference's
fixed padding (open_clip 77, BERT 35), so batching and padding in the scorers are tested too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- preprocessing
def double(state):
    """A state dict with float tensors in float64 (the parity tests compare in float64)."""
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


def torchvision_clip_pixels(images, size):
    """OpenAI CLIP / ImageReward ``_transform`` (torchvision on PIL)."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                    lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.stack([tf(im) for im in images])


def hf427_clip_pixels(images, size):
    """transformers 4.27 CLIPImageProcessor: RGB, PIL bicubic shortest side, floor crop, rescale."""
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        if min(w, h) != size:
            if w <= h:
                im = im.resize((size, int(size * h / w)), Image.BICUBIC)
            else:
                im = im.resize((int(size * w / h), size), Image.BICUBIC)
        a = np.array(im).astype(np.float32) * (1 / 255)
        top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        a = a[top:top + size, left:left + size]
        a = (a - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        out.append(torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1))
    return torch.stack(out)


def hps_pixels(images, size):
    """HPSv2 val transform: RGB, ToTensor, ResizeMaxSize on the tensor (torchvision), pad, normalise."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    out = []
    for im in images:
        x = T.ToTensor()(im.convert("RGB"))
        h, w = x.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = TF.resize(x, [nh, nw], T.InterpolationMode.BICUBIC)
        ph, pw = size - x.shape[1], size - x.shape[2]
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
        out.append(T.Normalize(MEAN, STD)(x))
    return torch.stack(out)


# ---------------------------------------------------------------- building blocks
def ln(x, W, p, eps):
    return F.layer_norm(x, x.shape[-1:], W[p + "weight"], W[p + "bias"], eps)


def lin(x, W, p, bias=True):
    return x @ W[p + "weight"].T + (W[p + "bias"] if bias else 0)


def attention(q, k, v, heads, mask=None):
    """q (L, D), k/v (S, D); mask (L, S) additive or None -> (L, D)."""
    L, D = q.shape
    d = D // heads
    q, k, v = (t.reshape(t.shape[0], heads, d).transpose(0, 1) for t in (q, k, v))
    s = q @ k.transpose(1, 2) / math.sqrt(d)
    if mask is not None:
        s = s + mask
    return (s.softmax(-1) @ v).transpose(0, 1).reshape(L, D)


def act(name, x):
    return x * torch.sigmoid(1.702 * x) if name == "quick_gelu" else F.gelu(x)


def causal(n):
    return torch.full((n, n), float("-inf")).triu(1)


# ---------------------------------------------------------------- HF CLIP (PickScore, aesthetic)
def hf_clip_layer(x, W, p, heads, act_name, mask=None):
    h = ln(x, W, p + "layer_norm1.", 1e-5)
    a = attention(lin(h, W, p + "self_attn.q_proj."), lin(h, W, p + "self_attn.k_proj."),
                  lin(h, W, p + "self_attn.v_proj."), heads, mask)
    x = x + lin(a, W, p + "self_attn.out_proj.")
    h = ln(x, W, p + "layer_norm2.", 1e-5)
    return x + lin(act(act_name, lin(h, W, p + "mlp.fc1.")), W, p + "mlp.fc2.")


def hf_clip_image(W, cfg, px):
    """Projected (not normalised) image embedding of one (3, S, S) image."""
    v = cfg["vision_config"]
    patch = F.conv2d(px[None], W["vision_model.embeddings.patch_embedding.weight"], stride=v["patch_size"])
    x = patch.flatten(2)[0].T
    x = torch.cat([W["vision_model.embeddings.class_embedding"][None], x])
    x = x + W["vision_model.embeddings.position_embedding.weight"]
    x = ln(x, W, "vision_model.pre_layrnorm.", 1e-5)
    for i in range(v["num_hidden_layers"]):
        x = hf_clip_layer(x, W, f"vision_model.encoder.layers.{i}.", v["num_attention_heads"], v["hidden_act"])
    return ln(x[0], W, "vision_model.post_layernorm.", 1e-5) @ W["visual_projection.weight"].T


def hf_clip_text(W, cfg, ids):
    """Projected text embedding of one unpadded id sequence; pooled at the first EOS (max id)."""
    t = cfg["text_config"]
    x = W["text_model.embeddings.token_embedding.weight"][ids]
    x = x + W["text_model.embeddings.position_embedding.weight"][: len(ids)]
    for i in range(t["num_hidden_layers"]):
        x = hf_clip_layer(x, W, f"text_model.encoder.layers.{i}.", t["num_attention_heads"],
                          t["hidden_act"], causal(len(ids)))
    x = ln(x, W, "text_model.final_layer_norm.", 1e-5)
    return x[int(torch.tensor(ids).argmax())] @ W["text_projection.weight"].T


def pickscore(W, cfg, tokenizer, images, prompts):
    W = double(W)
    px = hf427_clip_pixels(images, 32).double()
    out = []
    for im, prompt in zip(px, prompts):
        ids = tokenizer(prompt, truncation=True, max_length=77)["input_ids"]
        i, t = hf_clip_image(W, cfg, im), hf_clip_text(W, cfg, ids)
        out.append(W["logit_scale"].exp() * (i / i.norm()) @ (t / t.norm()))
    return torch.stack(out).double().numpy()


def aesthetic(W, cfg, M, images):
    """LAION v2: MLP(layers.0,2,4,6,7, no activations) on the L2-normalised CLIP image embedding."""
    W, M = double(W), double(M)
    px = torchvision_clip_pixels(images, 32).double()
    out = []
    for im in px:
        e = hf_clip_image(W, cfg, im)
        x = e / e.norm()
        for j in (0, 2, 4, 6, 7):
            x = lin(x, M, f"layers.{j}.")
        out.append(x[0])
    return torch.stack(out).double().numpy()


# ---------------------------------------------------------------- open_clip (HPSv2)
def oc_block(x, W, p, heads, mask=None):
    h = ln(x, W, p + "ln_1.", 1e-5)
    q, k, v = (h @ w.T + b for w, b in zip(W[p + "attn.in_proj_weight"].chunk(3),
                                           W[p + "attn.in_proj_bias"].chunk(3)))
    x = x + lin(attention(q, k, v, heads, mask), W, p + "attn.out_proj.")
    h = ln(x, W, p + "ln_2.", 1e-5)
    return x + lin(F.gelu(lin(h, W, p + "mlp.c_fc.")), W, p + "mlp.c_proj.")


def hps(W, cfg, tokenizer, images, prompts):
    W = double(W)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    px = hps_pixels(images, v["image_size"]).double()
    out = []
    for im, prompt in zip(px, prompts):
        x = F.conv2d(im[None], W["visual.conv1.weight"], stride=v["patch_size"]).flatten(2)[0].T
        x = torch.cat([W["visual.class_embedding"][None], x]) + W["visual.positional_embedding"]
        x = ln(x, W, "visual.ln_pre.", 1e-5)
        for i in range(v["layers"]):
            x = oc_block(x, W, f"visual.transformer.resblocks.{i}.", v["width"] // v["head_width"])
        img = ln(x[0], W, "visual.ln_post.", 1e-5) @ W["visual.proj"]
        ids = tokenizer([prompt])[0]
        y = W["token_embedding.weight"][ids] + W["positional_embedding"]
        for i in range(t["layers"]):
            y = oc_block(y, W, f"transformer.resblocks.{i}.", t["heads"], causal(len(ids)))
        txt = ln(y, W, "ln_final.", 1e-5)[int(ids.argmax())] @ W["text_projection"]
        out.append(100 * (img / img.norm()) @ (txt / txt.norm()))
    return torch.stack(out).double().numpy()


# ---------------------------------------------------------------- BLIP (ImageReward)
def blip_vit(W, arch, px):
    p = "blip.visual_encoder."
    x = F.conv2d(px[None], W[p + "patch_embed.proj.weight"], W[p + "patch_embed.proj.bias"],
                 stride=arch["patch_size"]).flatten(2)[0].T
    x = torch.cat([W[p + "cls_token"][0], x]) + W[p + "pos_embed"][0]
    for i in range(arch["num_hidden_layers"]):
        b = f"{p}blocks.{i}."
        h = ln(x, W, b + "norm1.", 1e-6)
        q, k, v = lin(h, W, b + "attn.qkv.").chunk(3, dim=-1)
        x = x + lin(attention(q, k, v, arch["num_attention_heads"]), W, b + "attn.proj.")
        x = x + lin(F.gelu(lin(ln(x, W, b + "norm2.", 1e-6), W, b + "mlp.fc1.")), W, b + "mlp.fc2.")
    return ln(x, W, p + "norm.", 1e-6)


def bert_attention(x, ctx, W, p, heads, mask):
    a = attention(lin(x, W, p + "self.query."), lin(ctx, W, p + "self.key."), lin(ctx, W, p + "self.value."),
                  heads, mask)
    return ln(lin(a, W, p + "output.dense.") + x, W, p + "output.LayerNorm.", 1e-12)


def imagereward(W, med, arch, tokenizer, images, prompts):
    W = double(W)
    px = torchvision_clip_pixels(images, arch["image_size"]).double()
    p = "blip.text_encoder."
    out = []
    for im, prompt in zip(px, prompts):
        img = blip_vit(W, arch, im)
        tok = tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
        ids, am = torch.tensor(tok["input_ids"]), torch.tensor(tok["attention_mask"])
        x = W[p + "embeddings.word_embeddings.weight"][ids] + W[p + "embeddings.position_embeddings.weight"][:35]
        x = ln(x, W, p + "embeddings.LayerNorm.", 1e-12)
        pad = ((1.0 - am.float()) * torch.finfo(torch.float32).min)[None, :]
        for i in range(med["num_hidden_layers"]):
            b = f"{p}encoder.layer.{i}."
            x = bert_attention(x, x, W, b + "attention.", med["num_attention_heads"], pad)
            x = bert_attention(x, img, W, b + "crossattention.", med["num_attention_heads"], None)
            h = F.gelu(lin(x, W, b + "intermediate.dense."))
            x = ln(lin(h, W, b + "output.dense.") + x, W, b + "output.LayerNorm.", 1e-12)
        r = x[0]
        for j in (0, 2, 4, 6, 7):
            r = lin(r, W, f"mlp.layers.{j}.")
        out.append((r[0] - 0.16717362830052426) / 1.0333394966054072)
    return torch.stack(out).double().numpy()
