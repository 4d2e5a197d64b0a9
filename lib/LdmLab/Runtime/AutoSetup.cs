using System.Runtime.CompilerServices;

namespace LdmLab.Runtime;

static class AutoSetup
{
    // Runs when any LdmLab type is first used: hosts that touch LdmLab before torch need no explicit call.
#pragma warning disable CA2255 // a library initializer is the point here
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Init()
    {
        if (Environment.GetEnvironmentVariable("LDMLAB_NO_AUTOSETUP") is not ("1" or "true")) TorchRuntime.TrySetup();
    }
}
