using System.Net;

namespace LdmLab.Tests;

/// <summary>Test servers on 127.0.0.1 (no test reaches the internet).</summary>
static class Loopback
{
    /// <summary>A started HttpListener on a free port the OS chose (a random one may be in use), retried if the port is
    /// taken between the probe and the start; it answers as 127.0.0.1 and as localhost (two host names, one server:
    /// what a test of "another host" needs).</summary>
    public static (HttpListener Listener, Uri Base) Listen()
    {
        for (int attempt = 0; ; attempt++)
        {
            var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            var listener = new HttpListener();
            listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            listener.Prefixes.Add($"http://localhost:{port}/");
            try { listener.Start(); }
            catch (HttpListenerException) when (attempt < 5) { listener.Close(); continue; }
            return (listener, new Uri($"http://127.0.0.1:{port}/"));
        }
    }
}
