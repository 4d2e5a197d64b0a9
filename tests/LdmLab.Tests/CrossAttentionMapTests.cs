using LdmLab.Conditioning;
using LdmLab.Runtime;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Cross-attention recording (per-layer observers) and DAAM aggregation (issue: text-to-image lab).</summary>
public class CrossAttentionMapTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    static UNet2DConditionModel TinyUNet() => UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));

    /// <summary>
    /// A CFG batch [unconditional; conditional] through the tiny diffusers U-Net: recording changes the output by no
    /// more than the fused kernel's rounding, keeps only the conditional half, one record per cross-attention layer
    /// and evaluation, each [1, heads, h, w, tokens] at the layer's own grid; the kept maps are the conditional half
    /// of what the layer computed, and their rows are probabilities.
    /// </summary>
    [Fact]
    public void Recording_leaves_outputs_unchanged_and_keeps_the_conditional_half()
    {
        TorchRuntime.Setup();
        var model = TinyUNet();
        manual_seed(5);
        var z = randn(1, 4, 8, 8);
        var (uncond, cond) = (randn(1, 7, 32), randn(1, 7, 32));
        using var _ = no_grad();
        Tensor Run() => model.Forward(cat([z, z]), tensor(10L), cat([uncond, cond]));
        var plain = Run();
        var raw = new Dictionary<string, Tensor>();
        Tensor recorded;
        using (var recorder = new CrossAttentionRecorder(model, 8, 8, guidanceBatch: true))
        using (model.ObserveCrossAttention((layer, p) => raw[layer] = p.clone().DetachFromDisposeScope()))
        {
            recorded = Run();
            recorded = Run();
            Assert.Equal(2, recorder.Evaluations);
            var crossLayers = model.AttentionLayers().Where(a => a.IsCrossAttention)
                .Select(a => a.LayerName).ToHashSet();
            Assert.Equal(crossLayers, recorder.Layers.ToHashSet());
            Assert.Equal(2 * crossLayers.Count, recorder.Records.Count);
            foreach (var r in recorder.Records.Where(r => r.Evaluation == 1))
            {
                var full = raw[r.Layer];                                                   // [2, heads, h·w, 7]
                Assert.Equal(new long[] { 1, full.shape[1], r.Height, r.Width, 7 }, r.Maps.shape);
                Assert.Equal(full.shape[2], r.Height * r.Width);
                var kept = r.Maps.reshape(full.shape[1], -1, 7);
                Assert.True(kept.allclose(full[1]), $"{r.Layer}: not the conditional half");
                Assert.False(kept.allclose(full[0]), $"{r.Layer}: halves equal");
                Assert.True(r.Maps.sum(-1).allclose(ones(1, r.Heads, r.Height, r.Width), atol: 1e-5));
            }
            Assert.Contains(recorder.Records, r => r.Height == 8 && r.Width == 8);
            Assert.Contains(recorder.Records, r => r.Height == 4 && r.Width == 4);
        }
        Assert.All(model.AttentionLayers(), layer => Assert.Null(layer.Observer));
        Assert.True(plain.allclose(recorded, rtol: 1e-5, atol: 1e-6),
            $"max |diff| {(plain - recorded).abs().max().item<float>()}");
    }

    /// <summary>Observers live on one model's layers: recording one model sees nothing of another one's
    /// calls.</summary>
    [Fact]
    public void Recording_one_model_does_not_see_another()
    {
        TorchRuntime.Setup();
        var (watched, other) = (TinyUNet(), TinyUNet());
        manual_seed(6);
        var (z, c) = (randn(1, 4, 8, 8), randn(1, 7, 32));
        using var _ = no_grad();
        using var recorder = new CrossAttentionRecorder(watched, 8, 8, guidanceBatch: false);
        other.Forward(z, tensor(3L), c);
        Assert.Equal(0, recorder.Evaluations);
        watched.Forward(z, tensor(3L), c);
        Assert.Equal(1, recorder.Evaluations);
    }

    /// <summary>
    /// DAAM on a hand-made recording: two evaluations of a 4×4 layer (2 heads, 3 tokens) and a 2×2 layer whose maps
    /// vary along x only. Expected by hand: the 4×4 maps pass unchanged (bilinear 4 → 4 is the identity), a 2×2 row
    /// [a, b] becomes [a, ¾a + ¼b, ¼a + ¾b, b] (align_corners = false), and everything is summed over heads, layers
    /// and evaluations.
    /// </summary>
    [Fact]
    public void Aggregation_is_right_on_a_hand_made_recording()
    {
        TorchRuntime.Setup();
        var fine = zeros([1, 2, 4, 4, 3]);
        fine[0, 0, 1, 2, 0] = tensor(1f);                                           // head 0, token 0: one hot pixel
        fine[0, 1, 3, 0, 2] = tensor(0.5f);                                         // head 1, token 2
        var coarse = zeros([1, 1, 2, 2, 3]);
        coarse[0, 0, .., 0, 1] = tensor(0.2f);                                      // token 1: column 0 = a = 0.2
        coarse[0, 0, .., 1, 1] = tensor(0.6f);                                      //          column 1 = b = 0.6
        var records = new[]
        {
            new AttentionRecord(0, "fine", fine), new AttentionRecord(0, "coarse", coarse),
            new AttentionRecord(1, "fine", fine * 3), new AttentionRecord(1, "coarse", coarse),
        };
        var aggregated = CrossAttentionRecorder.AggregateRecords(records, 4, 4);     // [1, 3, 4, 4]
        var expected = zeros(1, 3, 4, 4);
        expected[0, 0, 1, 2] = tensor(1f + 3f);
        expected[0, 2, 3, 0] = tensor(0.5f + 1.5f);
        var row = new[] { 0.2f, 0.75f * 0.2f + 0.25f * 0.6f, 0.25f * 0.2f + 0.75f * 0.6f, 0.6f };
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++) expected[0, 1, y, x] = tensor(2 * row[x]);
        Assert.True(aggregated.allclose(expected, atol: 1e-6), aggregated.ToString(TorchSharp.TensorStringStyle.Numpy));
        // a subset: the selection function picks records
        var onlyFine = CrossAttentionRecorder.AggregateRecords(records.Where(r => r.Layer == "fine"), 4, 4);
        Assert.Equal(0f, onlyFine[0, 1].abs().sum().item<float>());
        Assert.Throws<InvalidOperationException>(() => CrossAttentionRecorder.AggregateRecords([], 4, 4));
    }

    /// <summary>Words from the tokenizer's own pieces; a multi-token word's map is the mean of its tokens'
    /// maps.</summary>
    /// <summary>
    /// Aggregating N records keeps one tensor alive, not N partial sums: notebook 05's DAAM study aggregates per layer,
    /// step and head, and partial sums left for the GC took its kernel to 12 GB resident.
    /// </summary>
    [Fact]
    public void Aggregation_keeps_one_tensor_alive_whatever_the_number_of_records()
    {
        TorchRuntime.Setup();
        var records = Enumerable.Range(0, 8)                                          // maps [B, heads, h, w, L]
            .Select(e => new AttentionRecord(e, "l", rand(new long[] { 2, 3, 4, 4, 5 }))).ToList();
        var expected = records.Select(r => nn.functional.interpolate(r.Maps.sum(1).permute(0, 3, 1, 2), [8, 8],
            mode: InterpolationMode.Bilinear, align_corners: false)).Aggregate((a, b) => a + b);
        using var scope = NewDisposeScope();
        long before = scope.DisposablesCount;
        var sum = CrossAttentionRecorder.AggregateRecords(records, 8, 8);                   // [2, 5, 8, 8]
        Assert.Equal(before + 1, scope.DisposablesCount);
        Assert.True(sum.allclose(expected, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void Words_map_to_their_token_positions_and_merge()
    {
        const string prompt = "a sneaker on the left and a bag, photorealistic";
        var words = CrossAttentionRecorder.Words(ClipTokenizer.Default, prompt);
        Assert.Equal(new[] { "a", "sneaker", "on", "the", "left", "and", "a", "bag", ",", "photorealistic" },
            words.Select(w => w.Text).ToArray());
        Assert.Equal(1, words[0].TokenPositions.Single());
        var positions = words.SelectMany(w => w.TokenPositions).ToArray();
        Assert.Equal(Enumerable.Range(1, positions.Length), positions);          // consecutive after the start token
        var ids = ClipTokenizer.Default.Encode(prompt).Ids;
        Assert.Equal(ClipTokenizer.Default.EosId, ids[positions.Length + 1]);
        var multi = words[^1];
        Assert.True(multi.TokenPositions.Length > 1, "photorealistic is more than one BPE piece");
        var maps = arange(1 * 77 * 2 * 2, dtype: ScalarType.Float32).reshape(1, 77, 2, 2);
        var merged = CrossAttentionRecorder.WordMap(maps, multi);                    // [1, 2, 2]
        var byHand = multi.TokenPositions.Select(p => maps[0, p]).Aggregate((a, b) => a + b)
                     / multi.TokenPositions.Length;
        Assert.True(merged[0].allclose(byHand));
    }

    /// <summary>Pointing game and IoU after DAAM's threshold on hand-made maps and masks.</summary>
    [Fact]
    public void Pointing_and_iou_score_hand_made_maps()
    {
        // map 0 peaks in the left half, map 1 in the right half; both masks are the left half
        var maps = zeros(2, 2, 4);
        maps[0, .., ..2] = tensor(1f);
        maps[0, 0, 0] = tensor(2f);
        maps[1, 1, 3] = tensor(1f);
        var left = zeros(2, 2, 4);
        left[.., .., ..2] = tensor(1f);
        Assert.Equal(new[] { 1f, 0f }, CrossAttentionRecorder.PointingHits(maps, left).data<float>().ToArray());
        // map 0 normalised: 1 at (0,0), 0.5 on the rest of the left half, 0 on the right: τ = 0.4 keeps the left half
        var iou = CrossAttentionRecorder.Iou(maps, left).data<float>().ToArray();
        Assert.Equal(1f, iou[0], 6);
        Assert.Equal(0f, iou[1], 6);
        // τ = 0.6 keeps only the peak: IoU 1/4
        Assert.Equal(0.25f, CrossAttentionRecorder.Iou(maps, left, tau: 0.6).data<float>()[0], 6);
    }

    /// <summary>A query count that fits no 2ᵏ grid of the latents is a clear error, not a silent reshape.</summary>
    [Fact]
    public void A_wrong_latent_size_is_named()
    {
        TorchRuntime.Setup();
        var model = TinyUNet();
        manual_seed(7);
        using var _ = no_grad();
        using var recorder = new CrossAttentionRecorder(model, 6, 6, guidanceBatch: false);
        var error = Assert.Throws<InvalidOperationException>(
            () => model.Forward(randn(1, 4, 8, 8), tensor(3L), randn(1, 7, 32)));
        Assert.Contains("6×6", error.Message);
    }
}
