using System.Diagnostics;
using System.Net;

namespace LdmLab.Viz;

/// <summary>One progress report of a long loop; notebooks show it as an HTML progress bar.</summary>
[TypeFormatterSource(typeof(HtmlFormatterSource), PreferredMimeTypes = ["text/html"])]
public sealed record ProgressInfo(string Task, int Step, int Total, TimeSpan Elapsed, IReadOnlyDictionary<string, double> Metrics)
    : IHtmlContent
{
    public double Fraction => Total <= 0 ? 1 : Math.Clamp((double)Step / Total, 0, 1);
    public TimeSpan? Remaining => Step <= 0 ? null : TimeSpan.FromTicks((long)(Elapsed.Ticks * (Total - Step) / (double)Step));

    public override string ToString() =>
        $"{Task} {Step}/{Total} ({Fraction:P0}) {string.Join(" ", Metrics.Select(m => $"{m.Key}={m.Value:G4}"))} " +
        $"elapsed {Elapsed:mm\\:ss}{(Remaining is { } r ? $" eta {r:mm\\:ss}" : "")}";

    public string ToHtml() =>
        $"<div style=\"font-family:monospace\"><progress value=\"{Step}\" max=\"{Math.Max(Total, 1)}\" style=\"width:320px\"></progress> " +
        $"{WebUtility.HtmlEncode(ToString())}</div>";
}

/// <summary>
/// Throttled progress for loops: calls <paramref name="report"/> at most every <paramref name="minInterval"/>
/// (and always on the last step). Notebooks pass an action that updates a displayed value; the CLI prints.
/// On the last step the final state is also written as one line to <paramref name="finalLine"/> (standard output by
/// default): a live progress bar is updated in place, but a saved notebook keeps only what was first displayed.
/// </summary>
public sealed class Progress(string task, int total, Action<ProgressInfo> report, TimeSpan? minInterval = null,
    Action<string>? finalLine = null)
{
    readonly Stopwatch _watch = Stopwatch.StartNew();
    readonly TimeSpan _min = minInterval ?? TimeSpan.FromMilliseconds(500);
    TimeSpan? _last;

    public ProgressInfo? Last { get; private set; }

    public void Report(int step, IReadOnlyDictionary<string, double>? metrics = null)
    {
        var now = _watch.Elapsed;
        Last = new ProgressInfo(task, step, total, now, metrics ?? new Dictionary<string, double>());
        if (_last is null || step >= total || now - _last.Value >= _min)
        {
            _last = now;
            report(Last);
            if (step >= total && !ReferenceEquals(report, ConsoleReporter)) (finalLine ?? System.Console.WriteLine)("done: " + Last);
        }
    }

    /// <summary>A reporter that writes one line per report to the console.</summary>
    public static Action<ProgressInfo> Console => ConsoleReporter;

    static readonly Action<ProgressInfo> ConsoleReporter = p => System.Console.WriteLine(p.ToString());
}
