using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace LdmLab.Serving;

/// <summary>
/// The HTTP API (JSON in, JSON out; every error is <c>{"error": {"field": …, "message": …}}</c>):
/// <code>
/// POST   /v1/images            a request → 202 {id, state: queued, …} (200 {state: succeeded, cached: true} from the
///                              result cache); 400 naming the bad field, 413 body too large, 415 not JSON,
///                              429 + Retry-After queue full, 503 shutting down
/// GET    /v1/jobs/{id}         state, parameters, progress, error, the image (a data URL) once it succeeded
/// GET    /v1/jobs/{id}/image   the PNG (A1111's "parameters" chunk inside)
/// GET    /v1/jobs/{id}/events  server-sent events: state, progress, preview (every preview_every steps),
///                              then succeeded | failed | cancelled; closing the stream cancels the job
/// DELETE /v1/jobs/{id}         cancels a queued or running job (202), 409 when it had finished
/// </code>
/// </summary>
static class ImagesApi
{
    public static void Map(IEndpointRouteBuilder app, GenerationServer server)
    {
        app.MapPost("/v1/images", ctx => Submit(ctx, server));
        app.MapGet("/v1/jobs/{id}", ctx => WithJob(ctx, server, job => Json(ctx, 200, job.ToJson())));
        app.MapGet("/v1/jobs/{id}/image", ctx => WithJob(ctx, server, job => Image(ctx, job)));
        app.MapGet("/v1/jobs/{id}/events", ctx => WithJob(ctx, server, job => Events(ctx, server, job)));
        app.MapDelete("/v1/jobs/{id}", ctx => WithJob(ctx, server, job => Cancel(ctx, server, job)));
    }

    static async Task Submit(HttpContext ctx, GenerationServer server)
    {
        if (!server.Accepting)
        {
            server.Metrics.Rejected.WithLabels("draining").Inc();
            await Error(ctx, 503, null, "the server is shutting down: it finishes the jobs it has and takes no more");
            return;
        }
        if (ctx.Request.ContentType is not { } type || !type.StartsWith("application/json", StringComparison.Ordinal))
        {
            server.Metrics.Rejected.WithLabels("invalid").Inc();
            await Error(ctx, 415, "Content-Type", "expected application/json");
            return;
        }
        ImageRequest request;
        try
        {
            using var body = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
            request = ImageRequest.Parse(body.RootElement, server.Generator.Model, server.Options,
                () => Random.Shared.NextInt64(0, ImageRequest.MaxSeed + 1));
            if (server.Options.Safety is { } safety)
                foreach (var (field, text) in new[] { ("prompt", request.Prompt), ("negative_prompt",
                             request.NegativePrompt) })
                    if (text.Length > 0 && safety.CheckPrompt(field, text) is { } reason)
                    {
                        server.Metrics.Rejected.WithLabels("safety").Inc();
                        await Error(ctx, 400, field, $"{field}: refused by the safety filter ({reason})");
                        return;
                    }
        }
        catch (BadHttpRequestException e) when (e.StatusCode == 413)
        {
            server.Metrics.Rejected.WithLabels("too_large").Inc();
            await Error(ctx, 413, "body", $"the body is larger than {server.Options.MaxBodyBytes} bytes");
            return;
        }
        catch (JsonException e)
        {
            server.Metrics.Rejected.WithLabels("invalid").Inc();
            await Error(ctx, 400, "body", $"not valid JSON: {e.Message}");
            return;
        }
        catch (RequestValidationException e)
        {
            server.Metrics.Rejected.WithLabels("invalid").Inc();
            await Error(ctx, 400, e.Field, e.Message);
            return;
        }
        foreach (var use in request.Adapters) server.Metrics.AdapterRequests.WithLabels(use.Name).Inc();
        var job = new Job(request, GenerationServer.RequestId(ctx), request.CacheKey(server.Generator.Model.Name));
        // a request for attention maps is computed again: the cache keeps images, not maps
        if (!request.AttentionMaps && server.Cache.TryGet(job.CacheKey, out var png))
        {
            server.Metrics.ResultCacheHits.Inc();
            job.TryStart(1);
            job.Succeed(png, cached: true);
            server.Jobs.Add(job);
            server.Logger.LogInformation("job {JobId} answered from the result cache", job.Id);
            await Json(ctx, 200, job.ToJson());
            return;
        }
        // an identical request already queued or running: share its compute (one image, the same bytes)
        if (!request.AttentionMaps && server.InFlight.LeaderOf(job) is { } leader)
        {
            job.SharedWith = leader.Id;
            server.Metrics.Deduplicated.Inc();
            server.Jobs.Add(job);
            _ = InFlightRequests.Follow(job, leader, server.Requeue);
            server.Logger.LogInformation("job {JobId} shares the compute of the identical job {Leader}", job.Id,
                leader.Id);
            ctx.Response.Headers.Location = $"/v1/jobs/{job.Id}";
            await Json(ctx, 202, job.ToJson());
            return;
        }
        if (!server.Queue.TryEnqueue(job))
        {
            server.InFlight.Release(job);
            server.Metrics.Rejected.WithLabels("queue_full").Inc();
            ctx.Response.Headers.RetryAfter = server.Worker.RetryAfterSeconds.ToString();
            await Error(ctx, 429, null, $"the queue is full ({server.Queue.Capacity} jobs waiting): retry later");
            return;
        }
        server.Metrics.ResultCacheMisses.Inc();
        server.Metrics.QueueDepth.Set(server.Queue.Count);
        server.Jobs.Add(job);
        server.Logger.LogInformation("job {JobId} queued ({Steps} steps, {Width}x{Height}, {Scheduler})", job.Id,
            request.Steps, request.Width, request.Height, request.Scheduler);
        ctx.Response.Headers.Location = $"/v1/jobs/{job.Id}";
        await Json(ctx, 202, job.ToJson());
    }

    static Task WithJob(HttpContext ctx, GenerationServer server, Func<Job, Task> then)
    {
        var id = ctx.Request.RouteValues["id"] as string ?? "";
        return server.Jobs.Find(id) is { } job ? then(job) : Error(ctx, 404, "id", $"no job '{id}'");
    }

    static Task Image(HttpContext ctx, Job job)
    {
        if (job.Png is not { } png)
            return Error(ctx, 409, null, $"job {job.Id} is {job.State.ToString().ToLowerInvariant()}: no image");
        ctx.Response.ContentType = "image/png";
        return ctx.Response.Body.WriteAsync(png).AsTask();
    }

    static Task Cancel(HttpContext ctx, GenerationServer server, Job job)
    {
        if (!server.CancelJob(job, "cancelled by DELETE"))
            return Error(ctx, 409, null, $"job {job.Id} had already {job.State.ToString().ToLowerInvariant()}");
        return Json(ctx, 202, job.ToJson());
    }

    /// <summary>text/event-stream: each event as <c>event: NAME\ndata: JSON\n\n</c>, flushed at once. A client that
    /// goes away before the job finished cancels it.</summary>
    static async Task Events(HttpContext ctx, GenerationServer server, Job job)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        try
        {
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
            await foreach (var e in job.Events(ctx.RequestAborted))
            {
                var frame = $"event: {e.Name}\ndata: {e.Data.ToJsonString(Readable)}\n\n";
                await ctx.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(frame), ctx.RequestAborted);
                await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException
                                      && ctx.RequestAborted.IsCancellationRequested)
        {
            if (server.CancelJob(job, "the client closed the event stream"))
                server.Logger.LogInformation("job {JobId} cancelled: its event stream was closed", job.Id);
        }
    }

    internal static Task Json(HttpContext ctx, int status, JsonNode body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json; charset=utf-8";
        return ctx.Response.WriteAsync(body.ToJsonString(Readable));
    }

    /// <summary>Quotes and non-ASCII letters as they are (the default encoder writes ' as \u0027); still escapes
    /// what JSON must escape.</summary>
    internal static readonly JsonSerializerOptions Readable =
        new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    internal static Task Error(HttpContext ctx, int status, string? field, string message) =>
        Json(ctx, status, new JsonObject
        {
            ["error"] = new JsonObject { ["field"] = field, ["message"] = message },
        });
}
