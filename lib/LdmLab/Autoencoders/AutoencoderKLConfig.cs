using System.Text.Json.Nodes;

namespace LdmLab.Autoencoders;

/// <summary>The diffusers AutoencoderKL config (config.json), with diffusers' defaults.</summary>
public sealed record AutoencoderKLConfig
{
    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public int LatentChannels { get; init; } = 4;
    public int[] BlockOutChannels { get; init; } = [64];
    public int LayersPerBlock { get; init; } = 1;
    public int NormNumGroups { get; init; } = 32;
    public int SampleSize { get; init; } = 32;
    public double ScalingFactor { get; init; } = 0.18215;
    public bool MidBlockAddAttention { get; init; } = true;

    /// <summary>Stable Diffusion 1.x's VAE (also SDXL's architecture): 128-256-512-512, two ResNets per level, f = 8.</summary>
    public static AutoencoderKLConfig StableDiffusion15 => new()
    {
        BlockOutChannels = [128, 256, 512, 512], LayersPerBlock = 2, NormNumGroups = 32, SampleSize = 512, ScalingFactor = 0.18215,
    };

    /// <summary>Spatial downsampling factor f = 2^(number of blocks − 1).</summary>
    public int DownsamplingFactor => 1 << (BlockOutChannels.Length - 1);

    public static AutoencoderKLConfig FromJson(JsonObject o, string source = "config.json")
    {
        var down = o["down_block_types"]?.AsArray().Select(x => (string)x!).ToArray();
        var up = o["up_block_types"]?.AsArray().Select(x => (string)x!).ToArray();
        var c = new AutoencoderKLConfig
        {
            InChannels = (int?)o["in_channels"] ?? 3,
            OutChannels = (int?)o["out_channels"] ?? 3,
            LatentChannels = (int?)o["latent_channels"] ?? 4,
            BlockOutChannels = o["block_out_channels"]?.AsArray().Select(x => (int)x!).ToArray() ?? [64],
            LayersPerBlock = (int?)o["layers_per_block"] ?? 1,
            NormNumGroups = (int?)o["norm_num_groups"] ?? 32,
            SampleSize = (int?)o["sample_size"] ?? 32,
            ScalingFactor = (double?)o["scaling_factor"] ?? 0.18215,
            MidBlockAddAttention = (bool?)o["mid_block_add_attention"] ?? true,
        };
        int n = c.BlockOutChannels.Length;
        Interop.ConfigFile.RequirePositive(source, ("number of blocks", n), ("in_channels", c.InChannels),
            ("out_channels", c.OutChannels), ("latent_channels", c.LatentChannels), ("layers_per_block", c.LayersPerBlock),
            ("norm_num_groups", c.NormNumGroups), ("sample_size", c.SampleSize));
        Interop.ConfigFile.RequirePositive(source, c.BlockOutChannels.Select(ch => ("block_out_channels", (long)ch)).ToArray());
        if (down is not null && (down.Length != n || down.Any(d => d != "DownEncoderBlock2D")))
            throw new NotSupportedException($"{source}: down_block_types must be {n} × DownEncoderBlock2D");
        if (up is not null && (up.Length != n || up.Any(d => d != "UpDecoderBlock2D")))
            throw new NotSupportedException($"{source}: up_block_types must be {n} × UpDecoderBlock2D");
        if ((string?)o["act_fn"] is { } act && act != "silu") throw new NotSupportedException($"{source}: act_fn '{act}'");
        if (o["latents_mean"] is JsonArray || o["latents_std"] is JsonArray) throw new NotSupportedException($"{source}: latents_mean/latents_std are not supported");
        foreach (var ch in c.BlockOutChannels)
            if (ch % c.NormNumGroups != 0) throw new ArgumentException($"{source}: block_out_channels {ch} is not divisible by norm_num_groups {c.NormNumGroups}");
        return c;
    }

    /// <summary>config.json as diffusers v0.27.2 writes it; mid_block_add_attention (a later diffusers field) only when
    /// false, since v0.27.2 ignores it and would build the attention anyway.</summary>
    public JsonObject ToJson()
    {
        var o = Fields();
        if (MidBlockAddAttention) o.Remove("mid_block_add_attention");
        return o;
    }

    JsonObject Fields() => new()
    {
        ["_class_name"] = "AutoencoderKL",
        ["_diffusers_version"] = "0.27.2",
        ["act_fn"] = "silu",
        ["block_out_channels"] = new JsonArray(BlockOutChannels.Select(x => (JsonNode)x).ToArray()),
        ["down_block_types"] = new JsonArray(BlockOutChannels.Select(_ => (JsonNode)"DownEncoderBlock2D").ToArray()),
        ["force_upcast"] = true,
        ["in_channels"] = InChannels,
        ["latent_channels"] = LatentChannels,
        ["latents_mean"] = null,
        ["latents_std"] = null,
        ["layers_per_block"] = LayersPerBlock,
        ["mid_block_add_attention"] = MidBlockAddAttention,
        ["norm_num_groups"] = NormNumGroups,
        ["out_channels"] = OutChannels,
        ["sample_size"] = SampleSize,
        ["scaling_factor"] = ScalingFactor,
        ["up_block_types"] = new JsonArray(BlockOutChannels.Select(_ => (JsonNode)"UpDecoderBlock2D").ToArray()),
    };
}
