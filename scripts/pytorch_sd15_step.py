#!/usr/bin/env python3
"""PyTorch side of `ldmlab bench --json --case sd15-unet-step`: one guided step of Stable Diffusion 1.5's U-Net.

The U-Net is written in plain torch.nn with diffusers' v0.27.2 structure (the building blocks of
pytorch_reference_bench.py, whose tiny U-Net is checked against diffusers' recorded outputs there), built with SD 1.5's
config (block_out_channels 320-640-1280-1280, two layers per block, 8 heads, 768-d context, 32 groups: 859,520,964
parameters, checked below against tests/LdmLab.Tests/fixtures/sd15-manifest) and default-init weights. One step is a
forward of batch 2 (unconditional + conditional rows) on 4x64x64 latents with a 77x768 context, under no_grad.
Prints one JSON document: the median of the timed runs after warm-ups, per thread count.

Debian's python3-torch takes its BLAS from the libblas.so.3 alternative: with only the reference BLAS installed its
matrix products run ~20x slower than with OpenBLAS (measured here: a 8192x320 @ 320x1280 product 1.15 s against
0.06 s), which would make the comparison meaningless; install libopenblas0-pthread. The script measures one such
product and reports its rate, so a crippled BLAS shows in the output.

    apt-get install python3-torch libopenblas0-pthread   # Debian's PyTorch 1.13 (no diffusers needed)
    /usr/bin/python3 scripts/pytorch_sd15_step.py [--threads 2] [--warmups 1] [--repeats 5]
"""
import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("reference", os.path.join(HERE, "pytorch_reference_bench.py"))
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
ResnetBlock2D, Transformer2DModel, Sampler = reference.ResnetBlock2D, reference.Transformer2DModel, reference.Sampler


class Sd15UNet(nn.Module):
    """UNet2DConditionModel with SD 1.5's config: CrossAttnDownBlock2D x3 + DownBlock2D, the mirrored up blocks."""

    def __init__(self, widths=(320, 640, 1280, 1280), layers=2, heads=8, context=768, groups=32):
        super().__init__()
        temb = widths[0] * 4
        self.widths, self.layers = widths, layers
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(widths[0], temb)
        self.time_embedding.linear_2 = nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(4, widths[0], 3, padding=1)
        attn = [True, True, True, False]
        self.down_blocks = nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            block = nn.Module()
            block.resnets = nn.ModuleList([ResnetBlock2D(cin if j == 0 else w, w, groups, 1e-5, temb) for j in range(layers)])
            if attn[i]:
                block.attentions = nn.ModuleList([Transformer2DModel(w, heads, context, groups) for _ in range(layers)])
            if i < len(widths) - 1:
                block.downsamplers = nn.ModuleList([Sampler(w, True)])
            self.down_blocks.append(block)
            cin = w
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(widths[-1], widths[-1], groups, 1e-5, temb) for _ in range(2)])
        self.mid_block.attentions = nn.ModuleList([Transformer2DModel(widths[-1], heads, context, groups)])
        # skip channels in the order the up blocks pop them
        skips = [widths[0]] + [w for i, w in enumerate(widths) for _ in range(layers + (1 if i < len(widths) - 1 else 0))]
        self.up_blocks = nn.ModuleList()
        prev = widths[-1]
        for i, w in enumerate(reversed(widths)):
            block = nn.Module()
            resnets = []
            for j in range(layers + 1):
                skip = skips.pop()
                resnets.append(ResnetBlock2D(prev + skip, w, groups, 1e-5, temb))
                prev = w
            block.resnets = nn.ModuleList(resnets)
            if list(reversed(attn))[i]:
                block.attentions = nn.ModuleList([Transformer2DModel(w, heads, context, groups) for _ in range(layers + 1)])
            if i < len(widths) - 1:
                block.upsamplers = nn.ModuleList([Sampler(w, False)])
            self.up_blocks.append(block)
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], 1e-5)
        self.conv_out = nn.Conv2d(widths[0], 4, 3, padding=1)

    def forward(self, x, t, context):
        half = self.widths[0] // 2     # Timesteps(320, flip_sin_to_cos=True, freq_shift=0)
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
        temb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(temb)))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            for j, r in enumerate(block.resnets):
                h = r(h, temb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h, context)
                skips.append(h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
                skips.append(h)
        m = self.mid_block
        h = m.resnets[1](m.attentions[0](m.resnets[0](h, temb), context), temb)
        for block in self.up_blocks:
            for j, r in enumerate(block.resnets):
                h = r(torch.cat([h, skips.pop()], 1), temb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h, context)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def check_manifest(model):
    """The state dict's keys and shapes equal diffusers' SD 1.5 U-Net (sd15-manifest/unet_manifest.json)."""
    path = os.path.join(HERE, "..", "tests", "LdmLab.Tests", "fixtures", "sd15-manifest", "unet_manifest.json")
    manifest = json.load(open(path))
    expected = {row["key"]: row["shape"] for row in manifest["state_dict"]}
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    if ours != expected:
        missing = sorted(set(expected) - set(ours))[:5]
        extra = sorted(set(ours) - set(expected))[:5]
        raise SystemExit(f"not SD 1.5's U-Net: missing {missing}, unexpected {extra}")
    return sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2")
    ap.add_argument("--warmups", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Sd15UNet().eval()
    parameters = check_manifest(model)
    z, c, t = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768), torch.tensor([500, 500])
    torch.set_num_threads(2)
    a_, b_ = torch.randn(8192, 320), torch.randn(320, 1280)
    a_ @ b_
    start = time.perf_counter()
    a_ @ b_
    gemm_gflops = 2 * 8192 * 320 * 1280 / (time.perf_counter() - start) / 1e9
    results = []
    for threads in [int(x) for x in a.threads.split(",")]:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for _ in range(a.warmups):
                model(z, t, c)
            times = []
            for _ in range(a.repeats):
                start = time.perf_counter()
                model(z, t, c)
                times.append(time.perf_counter() - start)
        results.append({"threads": threads, "median_ms": round(statistics.median(times) * 1e3, 1),
                        "min_ms": round(min(times) * 1e3, 1), "max_ms": round(max(times) * 1e3, 1), "runs": len(times)})
    print(json.dumps({
        "case": "sd15-unet-step", "torch": torch.__version__, "parameters": parameters,
        "machine": platform.processor() or platform.machine(), "onednn": torch.backends.mkldnn.is_available(),
        "method": f"{a.warmups} warm-up(s), median of {a.repeats}", "results": results,
        "gemm_gflops_2_threads": round(gemm_gflops, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
