#!/usr/bin/env python3
"""Writes scheduler trajectories in the shared fixtures' format (schedulers.json + one safetensors per run) with
settings the published folder does not cover: other spacings, Karras σ, v-prediction, LMS/UniPC orders, UniPC's bh1,
predict_x0=False and disabled correctors. The reference is diffusers itself, imported from a source checkout:

    PYTHONPATH=<diffusers v0.27.2>/src:<dir with a huggingface_hub stand-in> /usr/bin/python3 \\
        scripts/make_scheduler_fixtures.py OUT_DIR [settings|class-defaults]

(Debian's python3-torch 1.13, python3-scipy, python3-tqdm, python3-pil, python3-regex, python3-filelock,
python3-importlib-metadata; huggingface_hub is imported by diffusers at module level but never used by a
scheduler, so any module that answers its names will do.) The fake model is the fixtures' one:
eps = 0.1·x + 0.05·sin(t/100).
"""
import json
import math
import os
import sys

import numpy as np
import torch

from fixture_files import save
import diffusers

RUNS = {
    # name: (class, config overrides, steps, step kwargs)
    "euler_ancestral_leading_12": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "leading"}, 12, {}),
    "euler_ancestral_trailing_v_10": ("EulerAncestralDiscreteScheduler",
                                      {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, {}),
    "heun_karras_8": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, 8, {}),
    "heun_leading_v_7": ("HeunDiscreteScheduler", {"timestep_spacing": "leading", "prediction_type": "v_prediction"}, 7, {}),
    "heun_trailing_sample_6": ("HeunDiscreteScheduler", {"timestep_spacing": "trailing", "prediction_type": "sample"}, 6, {}),
    "lms_karras_12": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, 12, {}),
    "lms_order2_10": ("LMSDiscreteScheduler", {}, 10, {"order": 2}),
    "lms_leading_v_9": ("LMSDiscreteScheduler", {"timestep_spacing": "leading", "prediction_type": "v_prediction"}, 9, {}),
    "unipc_bh1_order3_12": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}, 12, {}),
    "unipc_bh2_order3_karras_10": ("UniPCMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}, 10, {}),
    "unipc_order1_8": ("UniPCMultistepScheduler", {"solver_order": 1}, 8, {}),
    "unipc_leading_v_10": ("UniPCMultistepScheduler", {"timestep_spacing": "leading", "prediction_type": "v_prediction",
                                                         "steps_offset": 1}, 10, {}),
    "unipc_eps_space_trailing_9": ("UniPCMultistepScheduler", {"predict_x0": False, "timestep_spacing": "trailing"}, 9, {}),
    "unipc_no_corrector_20": ("UniPCMultistepScheduler", {"disable_corrector": [0, 1, 2], "lower_order_final": False}, 20, {}),
}
BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

# Every class with nothing but its own defaults (DDIM and DDPM clip x̂_0 by default, DDIM leaves ε̂ unclipped unless
# use_clipped_model_output), plus the two step options and zero-SNR rescaling where diffusers patches ᾱ_T.
CLASS_DEFAULTS = {
    "ddim_defaults_10": ("DDIMScheduler", {}, 10, {}),
    "ddim_defaults_clipped_output_10": ("DDIMScheduler", {}, 10, {"use_clipped_model_output": True}),
    "ddim_defaults_eta_10": ("DDIMScheduler", {}, 10, {"eta": 0.7}),
    "ddpm_defaults_10": ("DDPMScheduler", {}, 10, {}),
    "pndm_defaults_10": ("PNDMScheduler", {}, 10, {}),
    "euler_defaults_10": ("EulerDiscreteScheduler", {}, 10, {}),
    "euler_ancestral_defaults_10": ("EulerAncestralDiscreteScheduler", {}, 10, {}),
    "euler_ancestral_zero_snr_10": ("EulerAncestralDiscreteScheduler",
                                    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 10, {}),
    "heun_defaults_10": ("HeunDiscreteScheduler", {}, 10, {}),
    "lms_defaults_10": ("LMSDiscreteScheduler", {}, 10, {}),
    "dpmsolver_defaults_10": ("DPMSolverMultistepScheduler", {}, 10, {}),
    "unipc_defaults_10": ("UniPCMultistepScheduler", {}, 10, {}),
}
SETS = {"settings": (RUNS, BASE), "class-defaults": (CLASS_DEFAULTS, {})}


def run(cls_name, overrides, steps, step_kwargs, base):
    cls = getattr(diffusers, cls_name)
    s = cls(**{**base, **overrides})
    s.set_timesteps(steps)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sample = noise * s.init_noise_sigma
    out = {"noise": noise, "sample_init": sample.clone(), "alphas_cumprod": s.alphas_cumprod.float()}
    gen = torch.Generator().manual_seed(77)
    rec = {"model_input": [], "model_output": [], "prev_sample": [], "pred_original_sample": [], "step_noise": []}
    # the steps that draw noise get a generator; the noise each draws is recorded as step_noise
    stochastic = cls_name in ("EulerAncestralDiscreteScheduler", "DDPMScheduler") or step_kwargs.get("eta", 0) > 0
    for t in s.timesteps:
        x = s.scale_model_input(sample, t)
        eps = 0.1 * x + torch.tensor(0.05 * math.sin(float(t) / 100), dtype=torch.float32)
        kwargs = dict(step_kwargs)
        if stochastic:
            state = gen.get_state()
            rec["step_noise"].append(torch.randn(sample.shape, generator=gen))
            gen.set_state(state)
            kwargs["generator"] = gen
        r = s.step(eps, t, sample, **kwargs)
        rec["model_input"].append(x); rec["model_output"].append(eps); rec["prev_sample"].append(r.prev_sample)
        x0 = getattr(r, "pred_original_sample", None)
        rec["pred_original_sample"].append(x0)
        sample = r.prev_sample
    for k, v in rec.items():
        if v and all(e is not None for e in v):
            out[k] = torch.stack(v)
    out["timesteps"] = s.timesteps.clone() if s.timesteps.dtype == torch.int64 else s.timesteps.float()
    if hasattr(s, "sigmas"):
        out["sigmas"] = s.sigmas.float()
    spec = {"class": cls_name, "config": dict(s.config), "num_inference_steps": steps,
            "init_noise_sigma": float(s.init_noise_sigma), "noise_seed": 0}
    spec["config"] = {k: v for k, v in spec["config"].items() if not k.startswith("_")}
    if step_kwargs:
        spec["step_kwargs"] = step_kwargs
    if stochastic:
        spec["generator_seed"] = 77
    return spec, out


def main():
    out_dir = sys.argv[1]
    runs, base = SETS[sys.argv[2] if len(sys.argv) > 2 else "settings"]
    os.makedirs(out_dir, exist_ok=True)
    trajectories = {}
    for name, (cls, overrides, steps, kwargs) in runs.items():
        spec, tensors = run(cls, overrides, steps, kwargs, base)
        save(os.path.join(out_dir, name + ".safetensors"), tensors)
        trajectories[name] = spec
    meta = {"versions": {"torch": torch.__version__, "numpy": np.__version__, "diffusers": diffusers.__version__},
            "fake_model": "eps = 0.1 * x + 0.05 * sin(t / 100), x = scheduler.scale_model_input(sample, t)",
            "trajectories": trajectories}
    with open(os.path.join(out_dir, "schedulers.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
