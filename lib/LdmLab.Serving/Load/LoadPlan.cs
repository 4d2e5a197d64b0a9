namespace LdmLab.Serving.Load;

/// <summary>
/// One bounded load run against a server on loopback (<see cref="LoadDriver"/>): <see cref="Clients"/> clients
/// send requests one after another for <see cref="Duration"/> (at most <see cref="MaxRequests"/> in all, each given
/// <see cref="RequestTimeout"/>), so a run ends by itself. Every request carries a unique seed (its id: the seed, the
/// X-Request-Id <c>load-SEED</c> and the PNG's parameters name it). A share <see cref="KillFraction"/> of the requests
/// is dropped mid-generation (the event stream closed, or DELETE), a share <see cref="MalformedFraction"/> is
/// malformed (<see cref="MalformedCase"/>); the rest are valid and must each be answered with their own image.
/// </summary>
public sealed record LoadPlan
{
    public string Label { get; init; } = "load";
    public int Clients { get; init; } = 4;
    /// <summary>No request is started after this.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Most requests in the whole run (all clients together).</summary>
    public int MaxRequests { get; init; } = 1000;
    /// <summary>One request's deadline (POST to its final event); past it the request counts as lost.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(120);

    public string Prompt { get; init; } = "a bag on the left and a sneaker on the right";
    public int Steps { get; init; } = 10;
    public double Guidance { get; init; } = 5;
    /// <summary>The first seed; request n gets <c>SeedBase + n</c>.</summary>
    public long SeedBase { get; init; } = 1_000_000;

    /// <summary>Share of the requests dropped mid-generation, in [0, 1]: half close their event stream after the
    /// first progress event, half send DELETE.</summary>
    public double KillFraction { get; init; }
    /// <summary>Share of the requests that are malformed, in [0, 1] (<see cref="MalformedCase.All"/>, in turn).
    /// </summary>
    public double MalformedFraction { get; init; }
    /// <summary>The server's body limit, for the oversized request (413).</summary>
    public long MaxBodyBytes { get; init; } = 64 * 1024;

    /// <summary>Succeeded requests sent again one at a time after the run, their PNG compared with the one they got
    /// under load (the server must not answer them from its result cache: <c>--cache 0</c>).</summary>
    public int VerifySample { get; init; } = 4;
    /// <summary>How often the server's resident memory is read (<c>process_working_set_bytes</c> in /metrics).
    /// </summary>
    public TimeSpan RssEvery { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>How long the server gets after the run to show an idle worker (no job running, none queued).
    /// </summary>
    public TimeSpan SettleTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public LoadPlan Validate()
    {
        if (Clients is < 1 or > 1024) throw new ArgumentException($"clients {Clients}: expected 1 … 1024");
        if (MaxRequests < 1) throw new ArgumentException($"max requests {MaxRequests}: expected ≥ 1");
        if (Duration <= TimeSpan.Zero || Duration > TimeSpan.FromHours(24))
            throw new ArgumentException($"duration {Duration}: expected more than 0 and at most 24 h");
        if (RequestTimeout <= TimeSpan.Zero) throw new ArgumentException($"request timeout {RequestTimeout}: > 0");
        if (Steps < 1) throw new ArgumentException($"steps {Steps}: expected ≥ 1");
        if (KillFraction is < 0 or > 1 || double.IsNaN(KillFraction))
            throw new ArgumentException($"kill fraction {KillFraction}: expected a number in [0, 1]");
        if (MalformedFraction is < 0 or > 1 || double.IsNaN(MalformedFraction) || KillFraction + MalformedFraction > 1)
            throw new ArgumentException($"malformed fraction {MalformedFraction}: expected a number in [0, 1] " +
                                        "whose sum with the kill fraction is at most 1");
        if (VerifySample < 0) throw new ArgumentException($"verify sample {VerifySample}: expected ≥ 0");
        return this;
    }

    /// <summary>What request number <paramref name="n"/> is: the same for every run of the plan (a hash of the
    /// seed against the fractions), so a run can be repeated.</summary>
    public RequestKind KindOf(long n)
    {
        double u = new Random(unchecked((int)(SeedBase + n * 7919))).NextDouble();
        return u < MalformedFraction ? RequestKind.Malformed
            : u < MalformedFraction + KillFraction ? RequestKind.Kill : RequestKind.Valid;
    }
}

public enum RequestKind { Valid, Kill, Malformed }
