using LdmLab.UNet;

namespace LdmLab.Pipelines;

/// <summary>
/// The key names of a one-file Stable Diffusion checkpoint (the original CompVis/Stability code's, what A1111 and model
/// sites publish) written as rules from diffusers' names, so that one rule set serves both directions: reading builds
/// the diffusers model, maps each of its keys here and looks the result up in the file; writing does the reverse.
/// The rules are diffusers' <c>convert_diffusers_to_original_stable_diffusion.py</c>, stated per component:
/// <list type="bullet">
/// <item>U-Net, under <c>model.diffusion_model.</c>: the original numbers its blocks consecutively —
/// <c>input_blocks.{(lpb+1)·i + j + 1}</c> for down level i, resnet j (slot 0 the resnet, 1 the attention) and
/// <c>input_blocks.{(lpb+1)·(i+1)}.0.op</c> for its downsampler; <c>output_blocks.{(lpb+1)·i + j}</c> for up level i
/// (lpb + 1 resnets each), the upsampler in the last one's next slot.</item>
/// <item>VAE, under <c>first_stage_model.</c>: <c>encoder.down.{i}.block.{j}</c>, and the decoder numbered from the
/// lowest resolution: diffusers' <c>up_blocks.i</c> is the original's <c>up.{L−1−i}</c>.</item>
/// <item>Text encoder, under <c>cond_stage_model.transformer.</c>: transformers' CLIPTextModel names unchanged.</item>
/// </list>
/// Shapes agree everywhere but in the VAE's mid-block attention, whose q, k, v, proj_out are 1×1 convolutions in the
/// original ([C, C, 1, 1]) and linear layers in diffusers ([C, C]).
/// </summary>
public static class SingleFileKeys
{
    public const string UNetPrefix = "model.diffusion_model.";
    public const string VaePrefix = "first_stage_model.";
    public const string ClipPrefix = "cond_stage_model.transformer.";
    /// <summary>SD 2.x's OpenCLIP text tower (converted to transformers' names on reading).</summary>
    public const string OpenClipPrefix = "cond_stage_model.model.";

    // a resnet's parts: diffusers → original (U-Net)
    static readonly Dictionary<string, string> UNetResnet = new()
    {
        ["norm1"] = "in_layers.0", ["conv1"] = "in_layers.2", ["time_emb_proj"] = "emb_layers.1",
        ["norm2"] = "out_layers.0", ["conv2"] = "out_layers.3", ["conv_shortcut"] = "skip_connection",
    };

    /// <summary>The original name (without <see cref="UNetPrefix"/>) of a diffusers U-Net key.</summary>
    public static string UNet(string key, UNetConfig c)
    {
        var p = key.Split('.');
        int n = c.LayersPerBlock + 1;                                  // original slots per level
        string Rest(int from) => string.Join('.', p[from..]);
        string Resnet(int from) => (UNetResnet.TryGetValue(p[from], out var o) ? o : p[from]) + "." + Rest(from + 1);
        switch (p[0])
        {
            case "time_embedding" when p[1] is "linear_1" or "linear_2":
                return $"time_embed.{(p[1] == "linear_1" ? 0 : 2)}.{Rest(2)}";
            case "conv_in": return "input_blocks.0.0." + Rest(1);
            case "conv_norm_out": return "out.0." + Rest(1);
            case "conv_out": return "out.2." + Rest(1);
            case "down_blocks":
            {
                int i = int.Parse(p[1]), j = int.Parse(p[3]);
                return p[2] switch
                {
                    "resnets" => $"input_blocks.{n * i + j + 1}.0.{Resnet(4)}",
                    "attentions" => $"input_blocks.{n * i + j + 1}.1.{Rest(4)}",
                    "downsamplers" when p[4] == "conv" => $"input_blocks.{n * (i + 1)}.0.op.{Rest(5)}",
                    _ => throw Unmapped(key),
                };
            }
            case "mid_block":
                return p[1] switch
                {
                    "resnets" => $"middle_block.{(p[2] == "0" ? 0 : 2)}.{Resnet(3)}",
                    "attentions" => $"middle_block.1.{Rest(3)}",
                    _ => throw Unmapped(key),
                };
            case "up_blocks":
            {
                int i = int.Parse(p[1]), j = int.Parse(p[3]);
                bool attention = c.UpBlockTypes[i].StartsWith("CrossAttn", StringComparison.Ordinal);
                return p[2] switch
                {
                    "resnets" => $"output_blocks.{n * i + j}.0.{Resnet(4)}",
                    "attentions" => $"output_blocks.{n * i + j}.1.{Rest(4)}",
                    "upsamplers" when p[4] == "conv" =>
                        $"output_blocks.{n * i + n - 1}.{(attention ? 2 : 1)}.conv.{Rest(5)}",
                    _ => throw Unmapped(key),
                };
            }
            default: throw Unmapped(key);
        }
    }

    static readonly Dictionary<string, string> VaeMidAttention = new()
    {
        ["group_norm"] = "norm", ["to_q"] = "q", ["to_k"] = "k", ["to_v"] = "v", ["to_out"] = "proj_out",
    };

    /// <summary>The original name (without <see cref="VaePrefix"/>) of a diffusers AutoencoderKL key;
    /// <paramref name="levels"/> = number of encoder levels L.</summary>
    public static string Vae(string key, int levels)
    {
        var p = key.Split('.');
        string Rest(int from) => string.Join('.', p[from..]);
        string Resnet(int from) => (p[from] == "conv_shortcut" ? "nin_shortcut" : p[from]) + "." + Rest(from + 1);
        if (p[0] is "quant_conv" or "post_quant_conv") return key;
        if (p[0] is not ("encoder" or "decoder")) throw Unmapped(key);
        string side = p[0];
        switch (p[1])
        {
            case "conv_in" or "conv_out": return key;
            case "conv_norm_out": return $"{side}.norm_out.{Rest(2)}";
            case "mid_block" when p[2] == "resnets": return $"{side}.mid.block_{int.Parse(p[3]) + 1}.{Resnet(4)}";
            case "mid_block" when p[2] == "attentions" && VaeMidAttention.TryGetValue(p[4], out var part):
                // to_out.0.weight → proj_out.weight
                return $"{side}.mid.attn_1.{part}.{Rest(p[4] == "to_out" ? 6 : 5)}";
            case "down_blocks" when side == "encoder":
                return p[3] switch
                {
                    "resnets" => $"encoder.down.{p[2]}.block.{p[4]}.{Resnet(5)}",
                    "downsamplers" when p[5] == "conv" => $"encoder.down.{p[2]}.downsample.conv.{Rest(6)}",
                    _ => throw Unmapped(key),
                };
            case "up_blocks" when side == "decoder":
            {
                int level = levels - 1 - int.Parse(p[2]);                // the original counts from the bottom
                return p[3] switch
                {
                    "resnets" => $"decoder.up.{level}.block.{p[4]}.{Resnet(5)}",
                    "upsamplers" when p[5] == "conv" => $"decoder.up.{level}.upsample.conv.{Rest(6)}",
                    _ => throw Unmapped(key),
                };
            }
            default: throw Unmapped(key);
        }
    }

    /// <summary>
    /// SD 2.x's OpenCLIP text tower in transformers' names: <c>transformer.resblocks.{i}</c> → <c>encoder.layers.i</c>,
    /// <c>ln_1/ln_2</c> → <c>layer_norm1/2</c>, <c>mlp.c_fc/c_proj</c> → <c>mlp.fc1/fc2</c>, <c>attn.out_proj</c> →
    /// <c>self_attn.out_proj</c>, and the fused <c>attn.in_proj_weight</c> [3d, d] split by rows into q, k, v. Keys
    /// with no transformers counterpart (text_projection, logit_scale) are dropped. Returns diffusers key → tensor.
    /// </summary>
    public static Dictionary<string, TorchSharp.torch.Tensor> FromOpenClip(
        IReadOnlyDictionary<string, TorchSharp.torch.Tensor> tower)
    {
        var result = new Dictionary<string, TorchSharp.torch.Tensor>();
        foreach (var (key, t) in tower)
        {
            var p = key.Split('.');
            switch (p[0])
            {
                case "token_embedding": result["text_model.embeddings.token_embedding." + p[1]] = t; break;
                case "positional_embedding": result["text_model.embeddings.position_embedding.weight"] = t; break;
                case "ln_final": result["text_model.final_layer_norm." + p[1]] = t; break;
                case "transformer" when p.Length >= 5 && p[1] == "resblocks":
                {
                    string layer = $"text_model.encoder.layers.{p[2]}.", leaf = p[^1];
                    string part = string.Join('.', p[3..^1]);
                    if (part == "attn" && leaf is "in_proj_weight" or "in_proj_bias")
                    {
                        var qkv = t.chunk(3, 0);                          // [3d, …] → 3 × [d, …]
                        string kind = leaf == "in_proj_weight" ? "weight" : "bias";
                        result[layer + "self_attn.q_proj." + kind] = qkv[0];
                        result[layer + "self_attn.k_proj." + kind] = qkv[1];
                        result[layer + "self_attn.v_proj." + kind] = qkv[2];
                        break;
                    }
                    string? mapped = part switch
                    {
                        "ln_1" => "layer_norm1",
                        "ln_2" => "layer_norm2",
                        "mlp.c_fc" => "mlp.fc1",
                        "mlp.c_proj" => "mlp.fc2",
                        "attn.out_proj" => "self_attn.out_proj",
                        _ => null,
                    };
                    result[mapped is null ? "unknown." + key : layer + mapped + "." + leaf] = t;
                    break;
                }
                case "text_projection" or "logit_scale" or "attn_mask": break;
                default: result["unknown." + key] = t; break;
            }
        }
        return result;
    }

    static SingleFileException Unmapped(string key) =>
        new(null, key, "LdmLab has no original-checkpoint name for this diffusers key (an architecture the " +
                       "single-file format does not cover)");
}
