#!/usr/bin/env python3
"""Checks that a folder written by LdmLab's StableDiffusionPipeline.SavePretrained loads in diffusers unchanged:
UNet2DConditionModel, AutoencoderKL and the scheduler through their own from_pretrained (strict key matching, config
fields as diffusers reads them), then one U-Net call, one VAE decode and the scheduler's timesteps, compared with the
same components of the reference tiny fixtures loaded the same way. The text encoder and tokenizer folders are
transformers' formats; transformers is not installable here, so they are checked by LdmLab's own round-trip test.

    PYTHONPATH=<diffusers v0.27.2>/src:<stand-ins for huggingface_hub and safetensors> /usr/bin/python3 \\
        scripts/check_diffusers_load.py SAVED_DIR tests/LdmLab.Tests/fixtures
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel


def main():
    saved, fixtures = sys.argv[1], sys.argv[2]
    index = json.load(open(os.path.join(saved, "model_index.json")))
    assert index["_class_name"] == "StableDiffusionPipeline", index
    unet = UNet2DConditionModel.from_pretrained(os.path.join(saved, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(saved, "vae")).eval()
    scheduler = DDIMScheduler.from_pretrained(os.path.join(saved, "scheduler"))
    ref_unet = UNet2DConditionModel.from_pretrained(os.path.join(fixtures, "tiny-unet")).eval()
    ref_vae = AutoencoderKL.from_pretrained(os.path.join(fixtures, "tiny-vae")).eval()
    g = torch.Generator().manual_seed(0)
    z, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        du = (unet(z, t, ctx).sample - ref_unet(z, t, ctx).sample).abs().max().item()
        dv = (vae.decode(z).sample - ref_vae.decode(z).sample).abs().max().item()
    scheduler.set_timesteps(10)
    print(f"unet: {len(unet.state_dict())} keys loaded, max |diff| vs fixture {du:.2e}")
    print(f"vae: {len(vae.state_dict())} keys loaded, max |diff| vs fixture {dv:.2e}, scaling_factor {vae.config.scaling_factor}")
    print(f"scheduler: {type(scheduler).__name__}, timesteps {scheduler.timesteps.tolist()}")
    ok = du == 0 and dv == 0 and scheduler.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
