using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Serving.Load;

/// <summary>
/// A small client of the server's API for walk-throughs (notebook 13): POST a request, read a job's server-sent
/// events, read /metrics as numbers, and turn the PNG data URLs the API sends into tensors.
/// </summary>
public sealed class ServingClient(Uri server) : IDisposable
{
    readonly HttpClient _http = new() { BaseAddress = server, Timeout = TimeSpan.FromMinutes(5) };

    public HttpClient Http => _http;

    /// <summary>POST /v1/images → (status, the JSON answer).</summary>
    public async Task<(int Status, JsonObject Body)> Post(JsonObject request)
    {
        using var content = new StringContent(request.ToJsonString(), Encoding.UTF8, "application/json");
        using var response = await _http.PostAsync("/v1/images", content);
        return ((int)response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject());
    }

    /// <summary>GET /v1/jobs/{id}/events read to the final event: every event's name and data, in order.</summary>
    public async Task<List<(string Name, JsonObject Data)>> Events(string jobId)
    {
        var events = new List<(string, JsonObject)>();
        await using var stream = await _http.GetStreamAsync($"/v1/jobs/{jobId}/events");
        using var reader = new StreamReader(stream);
        string? name = null;
        while (await reader.ReadLineAsync() is { } line)
            if (line.StartsWith("event: ", StringComparison.Ordinal)) name = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
                events.Add((name ?? "message", JsonNode.Parse(line[6..])!.AsObject()));
        return events;
    }

    /// <summary>GET /metrics: every sample line (name with its labels → value).</summary>
    public async Task<Dictionary<string, double>> Metrics()
    {
        var text = await _http.GetStringAsync("/metrics");
        var values = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int space = line.LastIndexOf(' ');
            if (space > 0 && double.TryParse(line[(space + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture,
                    out var v))
                values[line[..space]] = v;
        }
        return values;
    }

    /// <summary>A <c>data:image/png;base64,…</c> URL → [C, H, W] in [−1, 1] (C = 3, or 1 for a grey map).</summary>
    public static Tensor Picture(string dataUrl, bool grey = false)
    {
        var png = Convert.FromBase64String(dataUrl[(dataUrl.IndexOf(',') + 1)..]);
        using var image = Image.Load<Rgb24>(png);
        var x = Data.ImageTensors.FromImage(image);                                          // [3, H, W]
        return grey ? x.mean([0], keepdim: true) : x;                                        // [1|3, H, W]
    }

    public void Dispose() => _http.Dispose();
}
