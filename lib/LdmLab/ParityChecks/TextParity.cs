using TorchSharp;
using System.Text.Json.Nodes;
using LdmLab.Conditioning;
using static TorchSharp.torch;

using LdmLab.Interop;

namespace LdmLab.ParityChecks;

/// <summary>The text path's fixtures: CLIP tokenizer cases (clip-tokenizer format) and CLIPTextModel folders.</summary>
public static class TextParity
{
    /// <summary>
    /// prompts.json cases against the embedded tokenizer and, when the folder has vocab.json + merges.txt, against
    /// those too: the padded 77-id layout, the untruncated ids and the BPE token strings, exactly (the difference is
    /// the number of positions that disagree).
    /// </summary>
    public static IReadOnlyList<ParityCheck> CheckTokenizer(string dir)
    {
        var path = Path.Combine(dir, "prompts.json");
        var json = PyJson.ParseFile(path) as JsonObject ?? throw new ParityFormatException($"{path}: not a JSON object");
        var cases = json["cases"] as JsonArray ?? throw new ParityFormatException($"{path}: no 'cases' array");
        var tokenizers = new List<(string name, ClipTokenizer tokenizer)> { ("embedded", ClipTokenizer.Default) };
        if (File.Exists(Path.Combine(dir, "vocab.json")) && File.Exists(Path.Combine(dir, "merges.txt")))
            tokenizers.Add(("folder", ClipTokenizer.FromFolder(dir)));
        var checks = new List<ParityCheck>();
        int max = (int?)json["model_max_length"] ?? 77;
        for (int i = 0; i < cases.Count; i++)
        {
            var c = cases[i]!.AsObject();
            var text = (string?)c["text"] ?? throw new ParityFormatException($"{path}: case {i} has no text");
            foreach (var (name, baseTokenizer) in tokenizers)
            {
                var tokenizer = new ClipTokenizerView(baseTokenizer, (int?)json["pad_token_id"], max);
                var label = $"tokenizer[{name}]/case{i:D2}";
                var ours = tokenizer.Encode(text);
                checks.Add(Exact($"{label}/input_ids", ours.Ids, c["input_ids"]));
                if (c["ids_untruncated"] is JsonArray untruncated)
                    checks.Add(Exact($"{label}/ids_untruncated", tokenizer.Untruncated(text), untruncated));
                if (c["bpe_tokens"] is JsonArray bpe)
                {
                    var tokens = baseTokenizer.EncodeTokens(text);
                    var expected = bpe.Select(t => (string)t!).ToArray();
                    int diff = tokens.Zip(expected).Count(p => p.First != p.Second) + Math.Abs(tokens.Length - expected.Length);
                    checks.Add(new ParityCheck($"{label}/bpe_tokens", diff, 0, diff == 0 ? null : Quote(text)));
                }
            }
        }
        return checks;
    }

    static string Quote(string text) => text.Length > 40 ? $"\"{text[..40]}…\"" : $"\"{text}\"";

    static ParityCheck Exact(string name, long[] ours, JsonNode? reference)
    {
        var expected = (reference as JsonArray)?.Select(v => (long)v!).ToArray() ?? [];
        int diff = ours.Zip(expected).Count(p => p.First != p.Second) + Math.Abs(ours.Length - expected.Length);
        return new ParityCheck(name, diff, 0, diff == 0 ? null : $"{ours.Length} ids vs {expected.Length}");
    }

    /// <summary>The embedded or folder tokenizer with the fixture's pad id and length; silent on truncation.</summary>
    sealed class ClipTokenizerView(ClipTokenizer inner, int? padId, int maxLength)
    {
        readonly ClipTokenizer _t = inner.With(padId ?? inner.PadId, maxLength, _ => { });
        public TokenizedPrompt Encode(string text) => _t.Encode(text);
        public long[] Untruncated(string text) => _t.Encode(text, pad: false, truncate: false).Ids;
    }

    /// <summary>A CLIPTextModel folder with tensors.safetensors: last_hidden_state, pooler_output and every hidden
    /// state, for each id tensor it records (input_ids, input_ids_short, …).</summary>
    public static IReadOnlyList<ParityCheck> CheckTextModel(string dir)
    {
        using var scope = NewDisposeScope();
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var model = ClipTextModel.FromPretrained(dir);
        model.to(Parity.Device);
        var r = Parity.OnDevice(SafeTensors.Load(Path.Combine(dir, "tensors.safetensors")), Parity.Device);
        var checks = new List<ParityCheck>();
        using var _ = no_grad();
        foreach (var idsKey in r.Keys.Where(k => k.StartsWith("input_ids")).Order())
        {
            string suffix = idsKey["input_ids".Length..];
            var output = model.Forward(r[idsKey], outputHiddenStates: true);
            Parity.Compare(checks, $"{name}/last_hidden_state{suffix}", output.LastHiddenState, r, "last_hidden_state" + suffix, ModelParity.Tolerance);
            Parity.Compare(checks, $"{name}/pooler_output{suffix}", output.PooledOutput, r, "pooler_output" + suffix, ModelParity.Tolerance);
            for (int i = 0; i < output.HiddenStates!.Count; i++)
                Parity.Compare(checks, $"{name}/hidden_states{suffix}.{i}", output.HiddenStates[i], r, $"hidden_states{suffix}.{i}", ModelParity.Tolerance);
            foreach (var key in r.Keys.Where(k => k.StartsWith($"hidden_states{suffix}.") &&
                         int.TryParse(k[$"hidden_states{suffix}.".Length..], out var layer) && layer >= output.HiddenStates.Count))
                checks.Add(new ParityCheck($"{name}/{key}", double.PositiveInfinity, ModelParity.Tolerance, "not produced by LdmLab"));
        }
        if (checks.Count == 0) throw new ParityFormatException($"{dir}: tensors.safetensors holds no input_ids*");
        return checks;
    }
}
