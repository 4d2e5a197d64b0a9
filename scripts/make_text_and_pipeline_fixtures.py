#!/usr/bin/env python3
"""Writes text-model and pipeline fixtures in the shared fixtures' formats (tiny-clip-text/, tiny-pipeline/) for
settings the published folders do not cover:

  text-more/<name>/      CLIPTextModel folders with other hidden sizes, layer and head counts, vocabularies, context
                         lengths and pooling rules, weights stored as float32, float16 or bfloat16;
  pipeline-more/<name>/  StableDiffusionPipeline runs with other schedulers, negative prompts, guidance ≤ 1 (no
                         unconditional pass), other latent channel counts and non-square sizes.

References. transformers is not installable here, so the text model's outputs come from the original implementation,
OpenAI CLIP's model.py (commit d05afc43: token + positional embedding, nn.MultiheadAttention blocks with the causal
mask, QuickGELU MLP of width 4·d, ln_final, pooling at argmax(ids)), with the weights converted from transformers'
key names (q/k/v concatenated into in_proj). That fixes intermediate_size = 4·hidden_size, quick_gelu and
layer_norm_eps = 1e-5, and pooling at the first EOS when EOS is the largest id (what transformers does for
eos_token_id ≠ 2, and argmax(ids) for the legacy eos_token_id = 2). The pipelines run diffusers v0.27.2's own
StableDiffusionPipeline.__call__ with text_encoder=None and the reference text model's outputs passed as
prompt_embeds / negative_prompt_embeds, exactly as the published tiny-pipeline fixture was made; the transformers
package is a stand-in that only answers the names diffusers imports (scripts/standins).

    PYTHONPATH=<diffusers v0.27.2>/src:scripts/standins:<dir holding OpenAI CLIP's clip/model.py> /usr/bin/python3 \\
        scripts/make_text_and_pipeline_fixtures.py tests/LdmLab.Tests/fixtures
"""
import importlib.util
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

from fixture_files import save

FIXTURES = sys.argv[1] if len(sys.argv) > 1 else "tests/LdmLab.Tests/fixtures"


def load_openai_clip_model_module():
    for d in sys.path:
        path = os.path.join(d, "clip", "model.py")
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("openai_clip_model", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit("OpenAI CLIP's clip/model.py is not on PYTHONPATH")


clip_model = load_openai_clip_model_module()

def randomize_constants(module, generator):
    """As the shared fixtures: constant-initialised parameters (norm scales/shifts, zero biases) get random values."""
    changed = []
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                base = 1.0 if float(p.flatten()[0]) == 1.0 else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=generator))
                changed.append(name)
    return changed


# ---- text models ---------------------------------------------------------------------------------------------------

TEXT = {
    # name: (vocab, hidden, layers, heads, positions, bos, eos, pad, storage dtype)
    "w48-l3-h6-v1000-p20": (1000, 48, 3, 6, 20, 998, 999, 0, torch.float32),
    "w64-l1-h1-v512-p16-fp16": (512, 64, 1, 1, 16, 510, 511, 511, torch.float16),
    "w16-l4-h2-clipvocab-bf16": (49408, 16, 4, 2, 77, 0, 2, 1, torch.bfloat16),
}


def text_state_dict(vocab, d, layers, positions, generator):
    def w(*shape, scale=None):
        scale = scale if scale is not None else 1 / math.sqrt(shape[-1])
        return torch.randn(shape, generator=generator) * scale

    sd = {"text_model.embeddings.token_embedding.weight": w(vocab, d, scale=0.5),
          "text_model.embeddings.position_embedding.weight": w(positions, d, scale=0.5),
          "text_model.final_layer_norm.weight": 1 + 0.1 * w(d, scale=1),
          "text_model.final_layer_norm.bias": 0.1 * w(d, scale=1)}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = w(d, d)
            sd[p + f"self_attn.{proj}.bias"] = 0.1 * w(d, scale=1)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + f"{ln}.weight"] = 1 + 0.1 * w(d, scale=1)
            sd[p + f"{ln}.bias"] = 0.1 * w(d, scale=1)
        sd[p + "mlp.fc1.weight"] = w(4 * d, d)
        sd[p + "mlp.fc1.bias"] = 0.1 * w(4 * d, scale=1)
        sd[p + "mlp.fc2.weight"] = w(d, 4 * d)
        sd[p + "mlp.fc2.bias"] = 0.1 * w(d, scale=1)
    return sd


class OpenAiText(torch.nn.Module):
    """OpenAI CLIP's text tower (its modules, its forward), loaded from transformers-named weights."""

    def __init__(self, sd, vocab, d, layers, heads, positions):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(vocab, d)
        self.positional_embedding = torch.nn.Parameter(torch.empty(positions, d))
        self.blocks = torch.nn.ModuleList([clip_model.ResidualAttentionBlock(d, heads) for _ in range(layers)])
        self.ln_final = clip_model.LayerNorm(d)
        with torch.no_grad():
            self.token_embedding.weight.copy_(sd["text_model.embeddings.token_embedding.weight"])
            self.positional_embedding.copy_(sd["text_model.embeddings.position_embedding.weight"])
            self.ln_final.weight.copy_(sd["text_model.final_layer_norm.weight"])
            self.ln_final.bias.copy_(sd["text_model.final_layer_norm.bias"])
            for i, b in enumerate(self.blocks):
                p = f"text_model.encoder.layers.{i}."
                b.attn.in_proj_weight.copy_(torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]))
                b.attn.in_proj_bias.copy_(torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"]))
                b.attn.out_proj.weight.copy_(sd[p + "self_attn.out_proj.weight"])
                b.attn.out_proj.bias.copy_(sd[p + "self_attn.out_proj.bias"])
                for ln, name in ((b.ln_1, "layer_norm1"), (b.ln_2, "layer_norm2")):
                    ln.weight.copy_(sd[p + f"{name}.weight"])
                    ln.bias.copy_(sd[p + f"{name}.bias"])
                b.mlp.c_fc.weight.copy_(sd[p + "mlp.fc1.weight"])
                b.mlp.c_fc.bias.copy_(sd[p + "mlp.fc1.bias"])
                b.mlp.c_proj.weight.copy_(sd[p + "mlp.fc2.weight"])
                b.mlp.c_proj.bias.copy_(sd[p + "mlp.fc2.bias"])

    def forward(self, ids):
        """encode_text up to the projection, keeping every hidden state (transformers' hidden_states order)."""
        n = ids.shape[1]
        mask = torch.empty(n, n).fill_(float("-inf")).triu_(1)       # build_attention_mask for this length
        for b in self.blocks:
            b.attn_mask = mask
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        states = [x]
        x = x.permute(1, 0, 2)                                         # NLD -> LND
        for b in self.blocks:
            x = b(x)
            states.append(x.permute(1, 0, 2))
        last = self.ln_final(x.permute(1, 0, 2))
        pooled = last[torch.arange(last.shape[0]), ids.argmax(dim=-1)]
        return last, pooled, states


def layout(tokens, bos, eos, pad, length):
    """[BOS, tokens…, EOS] truncated to length (EOS kept last) and padded, as transformers' CLIPTokenizer lays ids out."""
    ids = [bos] + tokens[: length - 2] + [eos]
    return ids + [pad] * (length - len(ids))


def make_text(name, spec, prompt_tokens):
    vocab, d, layers, heads, positions, bos, eos, pad, dtype = spec
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    sd = text_state_dict(vocab, d, layers, positions, g)
    stored = {k: v.to(dtype) for k, v in sd.items()}
    model = OpenAiText({k: v.float() for k, v in stored.items()}, vocab, d, layers, heads, positions).eval()
    if vocab == 49408:
        token_lists = prompt_tokens                                   # real CLIP BPE ids of real prompts
    else:
        token_lists = [torch.randint(1, vocab - 2, (k,), generator=g).tolist() for k in (5, positions + 3)]
    out_dir = os.path.join(FIXTURES, "text-more", name)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for suffix, length in (("", positions), ("_short", min(12, positions - 2))):
        ids = torch.tensor([layout(t, bos, eos, pad, length) for t in token_lists], dtype=torch.int64)
        with torch.no_grad():
            last, pooled, states = model(ids)
        tensors["input_ids" + suffix] = ids
        tensors["last_hidden_state" + suffix] = last
        tensors["pooler_output" + suffix] = pooled
        for i, s in enumerate(states):
            tensors[f"hidden_states{suffix}.{i}"] = s.contiguous()
    save(os.path.join(out_dir, "tensors.safetensors"), tensors)
    save(os.path.join(out_dir, "model.safetensors"), stored, {"format": "pt"})
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": vocab,
              "hidden_size": d, "intermediate_size": 4 * d, "num_hidden_layers": layers, "num_attention_heads": heads,
              "max_position_embeddings": positions, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
              "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "projection_dim": d,
              "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
              "torch_dtype": {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]}
    json.dump(config, open(os.path.join(out_dir, "config.json"), "w"), indent=2)
    info = {"reference": "OpenAI CLIP model.py (commit d05afc43) text tower, transformers key names converted",
            "storage_dtype": config["torch_dtype"], "parameters": sum(v.numel() for v in sd.values()),
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "shapes": {k: list(v.shape) for k, v in tensors.items()}}
    json.dump(info, open(os.path.join(out_dir, "info.json"), "w"), indent=1)
    return model


# ---- pipelines -----------------------------------------------------------------------------------------------------

PIPELINES = {
    # name: (scheduler class, scheduler overrides, steps, guidance, negative prompt, height, width, latent channels,
    #        text model folder (relative to the fixtures), prompt)
    "euler-negative": ("EulerDiscreteScheduler", {}, 8, 5.0, "a photo of an ankle boot", 16, 16, 4,
                       "tiny-clip-text", "an astronaut riding a horse"),
    "dpmpp-karras-c8-wide": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 6, 3.0, "", 16, 24, 8,
                             "tiny-clip-text", "a photo of an ankle boot"),
    "unipc-no-cfg-bf16-text": ("UniPCMultistepScheduler", {}, 7, 1.0, "Sandal", 16, 16, 4,
                               "text-more/w16-l4-h2-clipvocab-bf16", "Ankle boot"),
}
SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "steps_offset": 1}


def make_pipeline(name, spec, text_models, prompt_ids):
    import diffusers
    cls, overrides, steps, guidance, negative, height, width, channels, text_dir, prompt = spec
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    encode, text_config = text_models[text_dir]
    cross = text_config["hidden_size"]
    torch.manual_seed(sum(map(ord, name)))
    unet = diffusers.UNet2DConditionModel(
        sample_size=height // 2, in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross, attention_head_dim=4,
        norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=height).eval()
    randomize_constants(unet, g)
    randomize_constants(vae, g)
    scheduler = getattr(diffusers, cls)(**{**SD_SCHEDULER, **overrides})
    out_dir = os.path.join(FIXTURES, "pipeline-more", name)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    unet.save_pretrained(os.path.join(out_dir, "unet"))
    vae.save_pretrained(os.path.join(out_dir, "vae"))

    def embeds(text):
        ids = torch.tensor([prompt_ids[text]], dtype=torch.int64)
        return ids, encode(text, ids)

    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt_input_ids, prompt_embeds = embeds(prompt)
    negative_input_ids, negative_embeds = embeds(negative)
    latents_init = torch.randn((1, channels, height // 2, width // 2), generator=torch.Generator().manual_seed(42))
    per_step = []

    def record(p, i, t, kwargs):
        per_step.append(kwargs["latents"].clone())
        return kwargs

    with torch.no_grad():
        images = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, height=height, width=width,
                      num_inference_steps=steps, guidance_scale=guidance, latents=latents_init.clone(),
                      output_type="pt", callback_on_step_end=record).images
        final = per_step[-1]
        decoded = vae.decode(final / vae.config.scaling_factor).sample
    tensors = {"prompt_input_ids": prompt_input_ids, "negative_input_ids": negative_input_ids,
               "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds,
               "latents_init": latents_init, "latents_per_step": torch.stack(per_step), "latents_final": final,
               "vae_decode": decoded, "image": images, "timesteps": pipe.scheduler.timesteps.clone()}
    if tensors["timesteps"].dtype != torch.int64:
        tensors["timesteps"] = tensors["timesteps"].float()
    save(os.path.join(out_dir, "tensors.safetensors"), tensors)
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    info = {"pipeline": "StableDiffusionPipeline", "prompt": prompt, "negative_prompt": negative,
            "num_inference_steps": steps, "guidance_scale": guidance, "eta": 0.0, "height": height, "width": width,
            "vae_scale_factor": 2, "vae_scaling_factor": vae.config.scaling_factor,
            "scheduler": {"class": cls, "config": config},
            "timesteps": [float(t) for t in pipe.scheduler.timesteps],
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "diffusers": diffusers.__version__},
            "text_reference": text_config["reference"],
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "components": {"text_encoder": os.path.join("..", "..", text_dir), "unet": "unet", "vae": "vae",
                           "tokenizer": os.path.join("..", "..", "clip-tokenizer")}}
    json.dump(info, open(os.path.join(out_dir, "info.json"), "w"), indent=1)


def main():
    cases = json.load(open(os.path.join(FIXTURES, "clip-tokenizer", "prompts.json")))["cases"]
    prompt_ids = {c["text"]: c["input_ids"] for c in cases}
    prompt_tokens = [prompt_ids[p][1:prompt_ids[p].index(49407)] for p in ("a photo of an ankle boot", "Sandal")]
    text_models = {}
    for name, spec in TEXT.items():
        model = make_text(name, spec, prompt_tokens)
        config = json.load(open(os.path.join(FIXTURES, "text-more", name, "config.json")))
        config["reference"] = "OpenAI CLIP's text tower (model.py, d05afc43) on this folder's weights"

        def encode(text, ids, model=model):
            with torch.no_grad():
                return model(ids)[0]
        text_models["text-more/" + name] = (encode, config)
    # the published tiny text model: its MLP is 37 wide, not 4·32, so OpenAI's tower cannot run it; its embeddings come
    # from what transformers itself recorded: tiny-clip-text's last_hidden_state for its two prompts, and
    # tiny-pipeline's negative_prompt_embeds for ""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins"))
    from safetensors.torch import load_file
    tiny_tensors = load_file(os.path.join(FIXTURES, "tiny-clip-text", "tensors.safetensors"))
    tiny_info = json.load(open(os.path.join(FIXTURES, "tiny-clip-text", "info.json")))
    recorded = {p: tiny_tensors["last_hidden_state"][i:i + 1] for i, p in enumerate(tiny_info["prompts"])}
    recorded[""] = load_file(os.path.join(FIXTURES, "tiny-pipeline", "tensors.safetensors"))["negative_prompt_embeds"]
    tiny_config = json.load(open(os.path.join(FIXTURES, "tiny-clip-text", "config.json")))
    tiny_config["reference"] = "transformers' own outputs recorded in tiny-clip-text / tiny-pipeline"
    text_models["tiny-clip-text"] = (lambda text, ids: recorded[text].clone(), tiny_config)
    for name, spec in PIPELINES.items():
        make_pipeline(name, spec, text_models, prompt_ids)


if __name__ == "__main__":
    main()
