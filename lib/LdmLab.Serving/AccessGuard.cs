using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace LdmLab.Serving;

/// <summary>
/// What may reach the API: an optional API key and optional CORS, both off by default.
/// <list type="bullet">
/// <item><b>API key</b> (<see cref="ServeOptions.ApiKey"/>): every request but <c>/healthz</c>, <c>/readyz</c> (the
/// orchestrator's probes) and the page at <c>/</c> (static HTML; it asks for the key and sends it) needs
/// <c>Authorization: Bearer KEY</c>, else 401 with <c>WWW-Authenticate: Bearer</c>. Compared in constant time.</item>
/// <item><b>CORS</b> (<see cref="ServeOptions.CorsOrigin"/>): without it no Access-Control-* header is ever sent, so a
/// page from another origin cannot read the API. With it, requests from that origin (or any, for *) get
/// Access-Control-Allow-Origin and preflights (OPTIONS) 204 with the methods and headers the API uses.</item>
/// </list>
/// </summary>
sealed class AccessGuard(ServeOptions options)
{
    readonly byte[]? _key = options.ApiKey is { } key ? Encoding.UTF8.GetBytes(key) : null;

    static readonly HashSet<string> Open = ["/healthz", "/readyz", "/"];

    public async Task Invoke(HttpContext ctx, Func<Task> next)
    {
        var origin = ctx.Request.Headers.Origin.ToString();
        bool allowed = options.CorsOrigin is { } cors && origin.Length > 0 && (cors == "*" || cors == origin);
        if (allowed)
        {
            ctx.Response.Headers.AccessControlAllowOrigin = options.CorsOrigin == "*" ? "*" : origin;
            ctx.Response.Headers.Vary = "Origin";
            ctx.Response.Headers.AccessControlExposeHeaders = "Location, Retry-After, X-Request-Id";
            if (HttpMethods.IsOptions(ctx.Request.Method)
                && ctx.Request.Headers.AccessControlRequestMethod.Count > 0)
            {
                ctx.Response.Headers.AccessControlAllowMethods = "GET, POST, DELETE";
                ctx.Response.Headers.AccessControlAllowHeaders = "Authorization, Content-Type, X-Request-Id";
                ctx.Response.Headers.AccessControlMaxAge = "600";
                ctx.Response.StatusCode = 204;
                return;
            }
        }
        if (_key is not null && !Open.Contains(ctx.Request.Path.Value ?? "") && !Authorized(ctx))
        {
            ctx.Response.Headers.WWWAuthenticate = "Bearer";
            await ImagesApi.Error(ctx, 401, "Authorization", "expected the header Authorization: Bearer <API key>");
            return;
        }
        await next();
    }

    bool Authorized(HttpContext ctx)
    {
        var header = ctx.Request.Headers.Authorization.ToString();
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return false;
        var given = Encoding.UTF8.GetBytes(header[scheme.Length..].Trim());
        return CryptographicOperations.FixedTimeEquals(given, _key);
    }
}
