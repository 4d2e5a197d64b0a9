#!/usr/bin/env python3
"""PyTorch side of `ldmlab bench`'s fixture-config cases, for a side-by-side ratio on one machine.

Runs with Debian's python3-torch (1.13, `apt-get install python3-torch`; diffusers is not needed): the tiny U-Net and
tiny VAE of tests/LdmLab.Tests/fixtures are written out below in plain torch.nn with diffusers' structure and
state-dict names, and the script first proves that they are the same networks by loading the fixtures' weights and
matching diffusers' recorded outputs (max |diff| <= 1e-4). Then it times what `ldmlab bench --json` times as
tiny-unet-train / tiny-vae-train: batch 64, forward + MSE + backward, 3 warm-ups, median of 10, at 1 and 2 threads,
with oneDNN on (PyTorch's default) and off. Prints one JSON document.

    /usr/bin/python3 scripts/pytorch_reference_bench.py [--threads 1,2] [--case tiny-unet-train,tiny-vae-train]
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "LdmLab.Tests", "fixtures")


def read_safetensors(path):
    """Plain reader (the Rust safetensors package is not needed): header length, JSON header, raw data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64, "F64": np.float64}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dtypes[v["dtype"]]).reshape(v["shape"]).copy())
    return out


# ---- building blocks, diffusers v0.27.2 structure and names ----

class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, groups, eps, temb=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        if temb is not None:
            self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x) + h


class Attention(nn.Module):
    def __init__(self, dim, context_dim, heads, dim_head, qkv_bias=False):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        m = context.shape[1]

        def split(t, length):   # [b, len, h·d] -> [b·h, len, d]
            return t.reshape(b, length, self.heads, -1).permute(0, 2, 1, 3).reshape(b * self.heads, length, -1)

        q, k, v = split(self.to_q(x), n), split(self.to_k(context), m), split(self.to_v(context), m)
        probs = torch.baddbmm(torch.empty(q.shape[0], n, m), q, k.transpose(1, 2), beta=0, alpha=self.scale).softmax(-1)
        o = probs.bmm(v).reshape(b, self.heads, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out[1](self.to_out[0](o))


class GEGLU(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.proj = nn.Linear(dim, out * 2)

    def forward(self, x):
        h, g = self.proj(x).chunk(2, -1)
        return h * F.gelu(g)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, None, heads, dim_head)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, context_dim, heads, dim_head)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, channels, heads, context_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, 1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, channels // heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.transformer_blocks[0](t, context)
        return self.proj_out(t.reshape(b, h, w, c).permute(0, 3, 1, 2)) + x


class Sampler(nn.Module):
    """Downsample2D / Upsample2D: a conv named `conv` (stride 2, or after nearest ×2)."""

    def __init__(self, channels, down, padding=1):
        super().__init__()
        self.down, self.padding = down, padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=padding if down else 1)

    def forward(self, x):
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TinyUNet(nn.Module):
    """UNet2DConditionModel with the tiny-unet fixture's config (blocks 32-64, 8 heads, context 32, 8 groups)."""

    def __init__(self):
        super().__init__()
        g, temb, ctx = 8, 128, 32
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1, self.time_embedding.linear_2 = nn.Linear(32, temb), nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(4, 32, 3, padding=1)
        d0, d1 = nn.Module(), nn.Module()
        d0.resnets = nn.ModuleList([ResnetBlock2D(32, 32, g, 1e-5, temb)])
        d0.attentions = nn.ModuleList([Transformer2DModel(32, 8, ctx, g)])
        d0.downsamplers = nn.ModuleList([Sampler(32, True)])
        d1.resnets = nn.ModuleList([ResnetBlock2D(32, 64, g, 1e-5, temb)])
        self.down_blocks = nn.ModuleList([d0, d1])
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(64, 64, g, 1e-5, temb), ResnetBlock2D(64, 64, g, 1e-5, temb)])
        self.mid_block.attentions = nn.ModuleList([Transformer2DModel(64, 8, ctx, g)])
        u0, u1 = nn.Module(), nn.Module()
        u0.resnets = nn.ModuleList([ResnetBlock2D(128, 64, g, 1e-5, temb), ResnetBlock2D(96, 64, g, 1e-5, temb)])
        u0.upsamplers = nn.ModuleList([Sampler(64, False)])
        u1.resnets = nn.ModuleList([ResnetBlock2D(96, 32, g, 1e-5, temb), ResnetBlock2D(64, 32, g, 1e-5, temb)])
        u1.attentions = nn.ModuleList([Transformer2DModel(32, 8, ctx, g), Transformer2DModel(32, 8, ctx, g)])
        self.up_blocks = nn.ModuleList([u0, u1])
        self.conv_norm_out = nn.GroupNorm(g, 32, 1e-5)
        self.conv_out = nn.Conv2d(32, 4, 3, padding=1)

    def forward(self, x, t, context):
        half = 16   # Timesteps(32, flip_sin_to_cos=True, freq_shift=0)
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
        temb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(temb)))
        h = self.conv_in(x)
        skips = [h]
        d0, d1 = self.down_blocks
        h = d0.attentions[0](d0.resnets[0](h, temb), context); skips.append(h)
        h = d0.downsamplers[0](h); skips.append(h)
        h = d1.resnets[0](h, temb); skips.append(h)
        m = self.mid_block
        h = m.resnets[1](m.attentions[0](m.resnets[0](h, temb), context), temb)
        u0, u1 = self.up_blocks
        for r in u0.resnets:
            h = r(torch.cat([h, skips.pop()], 1), temb)
        h = u0.upsamplers[0](h)
        for r, a in zip(u1.resnets, u1.attentions):
            h = a(r(torch.cat([h, skips.pop()], 1), temb), context)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VaeAttention(nn.Module):
    """The VAE mid-block attention: GroupNorm, one head over all pixels, biases, residual."""

    def __init__(self, c, g):
        super().__init__()
        self.group_norm = nn.GroupNorm(g, c, 1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(0.0)])
        self.scale = c ** -0.5

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        probs = torch.baddbmm(torch.empty(b, h * w, h * w), q, k.transpose(1, 2), beta=0, alpha=self.scale).softmax(-1)
        o = self.to_out[0](probs.bmm(v))
        return o.transpose(1, 2).reshape(b, c, h, w) + x


def vae_mid(c, g):
    m = nn.Module()
    m.resnets = nn.ModuleList([ResnetBlock2D(c, c, g, 1e-6), ResnetBlock2D(c, c, g, 1e-6)])
    m.attentions = nn.ModuleList([VaeAttention(c, g)])
    return m


def run_mid(m, x):
    return m.resnets[1](m.attentions[0](m.resnets[0](x)))


class TinyVae(nn.Module):
    """AutoencoderKL with the tiny-vae fixture's config (blocks 32-64, one layer per block, 8 groups, 4 latents)."""

    def __init__(self):
        super().__init__()
        g = 8
        self.encoder = nn.Module()
        e = self.encoder
        e.conv_in = nn.Conv2d(3, 32, 3, padding=1)
        e0, e1 = nn.Module(), nn.Module()
        e0.resnets = nn.ModuleList([ResnetBlock2D(32, 32, g, 1e-6)])
        e0.downsamplers = nn.ModuleList([Sampler(32, True, padding=0)])
        e1.resnets = nn.ModuleList([ResnetBlock2D(32, 64, g, 1e-6)])
        e.down_blocks = nn.ModuleList([e0, e1])
        e.mid_block = vae_mid(64, g)
        e.conv_norm_out, e.conv_out = nn.GroupNorm(g, 64, 1e-6), nn.Conv2d(64, 8, 3, padding=1)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)
        self.decoder = nn.Module()
        d = self.decoder
        d.conv_in = nn.Conv2d(4, 64, 3, padding=1)
        d.mid_block = vae_mid(64, g)
        u0, u1 = nn.Module(), nn.Module()
        u0.resnets = nn.ModuleList([ResnetBlock2D(64, 64, g, 1e-6), ResnetBlock2D(64, 64, g, 1e-6)])
        u0.upsamplers = nn.ModuleList([Sampler(64, False)])
        u1.resnets = nn.ModuleList([ResnetBlock2D(64, 32, g, 1e-6), ResnetBlock2D(32, 32, g, 1e-6)])
        d.up_blocks = nn.ModuleList([u0, u1])
        d.conv_norm_out, d.conv_out = nn.GroupNorm(g, 32, 1e-6), nn.Conv2d(32, 3, 3, padding=1)

    def encode_mean(self, x):
        e = self.encoder
        h = e.conv_in(x)
        h = e.down_blocks[0].downsamplers[0](e.down_blocks[0].resnets[0](h))
        h = run_mid(e.mid_block, e.down_blocks[1].resnets[0](h))
        return self.quant_conv(e.conv_out(F.silu(e.conv_norm_out(h))))[:, :4]

    def decode(self, z):
        d = self.decoder
        h = run_mid(d.mid_block, d.conv_in(self.post_quant_conv(z)))
        for block in d.up_blocks:
            for r in block.resnets:
                h = r(h)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return d.conv_out(F.silu(d.conv_norm_out(h)))

    def forward(self, x):
        return self.decode(self.encode_mean(x))


def check_parity():
    """Loads the fixtures' weights and compares with diffusers' recorded outputs: proves the networks are the same."""
    unet = TinyUNet()
    unet.load_state_dict(read_safetensors(os.path.join(FIXTURES, "tiny-unet", "diffusion_pytorch_model.safetensors")))
    t = read_safetensors(os.path.join(FIXTURES, "tiny-unet", "tensors.safetensors"))
    with torch.no_grad():
        du = (unet(t["latents"], t["timesteps"], t["encoder_hidden_states"]) - t["sample"]).abs().max().item()
    vae = TinyVae()
    vae.load_state_dict(read_safetensors(os.path.join(FIXTURES, "tiny-vae", "diffusion_pytorch_model.safetensors")))
    t = read_safetensors(os.path.join(FIXTURES, "tiny-vae", "tensors.safetensors"))
    with torch.no_grad():
        dv = (vae(t["x"]) - t["decode_of_mean"]).abs().max().item()
    if du > 1e-4 or dv > 1e-4:
        sys.exit(f"parity failed: tiny-unet max|diff| {du:.2e}, tiny-vae {dv:.2e}")
    return {"tiny-unet": du, "tiny-vae": dv}


def make_case(name):
    torch.manual_seed(0)
    if name == "tiny-unet-train":
        model = TinyUNet()
        z, t, c, target = torch.randn(64, 4, 8, 8), torch.randint(0, 1000, (64,)), torch.randn(64, 7, 32), torch.randn(64, 4, 8, 8)

        def run():
            model.zero_grad()
            F.mse_loss(model(z, t, c), target).backward()
        return run
    if name == "tiny-vae-train":
        model = TinyVae()
        x = torch.rand(64, 3, 32, 32) * 2 - 1

        def run():
            model.zero_grad()
            F.mse_loss(model(x), x).backward()
        return run
    sys.exit(f"unknown case {name}")


def median_ms(run, warmups=3, repeats=10):
    for _ in range(warmups):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--case", default="tiny-unet-train,tiny-vae-train")
    args = ap.parse_args()
    parity = check_parity()
    results = []
    for name in args.case.split(","):
        for threads in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for onednn in (True, False):
                with torch.backends.mkldnn.flags(enabled=onednn):
                    med, lo, hi = median_ms(make_case(name))
                results.append({"case": name, "onednn": onednn, "threads": threads, "median_ms": round(med, 2),
                                "min_ms": round(lo, 2), "max_ms": round(hi, 2), "runs": 10})
                print(f"{name} threads {threads} oneDNN {'on' if onednn else 'off'}: {med:.1f} ms", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "parity_max_abs_diff": parity,
                      "method": "3 warm-ups, median of 10 single runs", "results": results}, indent=2))


if __name__ == "__main__":
    main()
