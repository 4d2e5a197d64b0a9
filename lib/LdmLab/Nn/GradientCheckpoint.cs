using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace LdmLab.Nn;

/// <summary>
/// Gradient checkpointing (Chen et al. 2016; PyTorch's <c>torch.utils.checkpoint</c>, which TorchSharp lacks),
/// built on TorchSharp's custom autograd functions. A segment y = f(x) of the network
/// <list type="number">
/// <item>runs forward without building a graph, so none of its intermediate activations is kept — only its inputs
/// (saved) and outputs (handed on);</item>
/// <item>in backward, runs f again on detached copies of the inputs with gradients on, and back-propagates the
/// incoming ∂L/∂y through that fresh graph: the parameters' gradients accumulate into their <c>.grad</c> as in
/// plain backprop, and ∂L/∂x is returned to the outer graph.</item>
/// </list>
/// Memory: activations inside a segment live only while that segment is recomputed; the price is one more forward
/// of each segment per step (about a third more compute). This is PyTorch's reentrant variant
/// (<c>use_reentrant=True</c>): gradients reach every leaf the recomputed graph touches — the segment's own
/// parameters and also parameters outside it that hooks bring in, such as an attached LoRA adapter's factors — but
/// <c>torch.autograd.grad(loss, parameters)</c> does not see parameter gradients made this way; use
/// <c>backward()</c>. A dummy input that requires grad keeps the segment in the graph even when no real input does
/// (a frozen U-Net with LoRA: PyTorch's reentrant checkpoint silently drops those gradients there).
/// <para>Only RNG-free segments: the recomputation must reproduce the forward exactly. Dropout with p &gt; 0 in
/// training mode draws new random masks the second time (PyTorch restores the RNG state to avoid that, a state
/// TorchSharp does not expose per device), so <see cref="Run"/> refuses segments that contain one.</para>
/// <para>Every output of a segment also costs an uninitialised tensor of its size that TorchSharp's autograd node
/// allocates to materialise missing output gradients (on Linux CPU its pages stay untouched, on CUDA it is real
/// memory), so segments should have few, small outputs.</para>
/// </summary>
public static class GradientCheckpoint
{
    /// <summary>
    /// y = forward(inputs) with its activations recomputed in backward instead of stored; null inputs are allowed
    /// (passed through as null). Runs <paramref name="forward"/> plainly when gradients are off.
    /// <paramref name="owner"/> is the module whose layers the segment runs (checked for dropout).
    /// </summary>
    public static Tensor[] Run(nn.Module owner, Func<Tensor?[], Tensor[]> forward, params Tensor?[] inputs)
    {
        if (!is_grad_enabled()) return forward(inputs);
        foreach (var (path, module) in owner.named_modules())
            if (module is Dropout { p: > 0 } d && d.training)
                throw new NotSupportedException($"{owner.GetName()}.{path}: dropout p = {d.p} in training mode; " +
                                                "checkpointed segments must be RNG-free (set p = 0 or eval())");
        var dummy = empty(0).requires_grad_(true);                  // keeps the node in the graph (see above)
        var args = new object?[inputs.Length + 2];
        args[0] = new Segment(forward, inputs.Length);
        args[1] = dummy;
        Array.Copy(inputs, 0, args, 2, inputs.Length);
        return CheckpointFunction.apply(args!).ToArray();
    }

    /// <summary>The segment's function and its input count (passed to the autograd node as a non-tensor).</summary>
    sealed record Segment(Func<Tensor?[], Tensor[]> Forward, int Inputs);

    /// <summary>The autograd node: vars = [segment, dummy, inputs…]; outputs = the segment's outputs.</summary>
    sealed class CheckpointFunction : MultiTensorFunction<CheckpointFunction>
    {
        public override string Name => "GradientCheckpoint";

        public override List<Tensor> forward(AutogradContext ctx, params object[] vars)
        {
            var segment = (Segment)vars[0];
            var inputs = vars.Skip(2).Select(v => v as Tensor).ToArray();
            ctx.save_data("segment", segment);
            ctx.save_data("present", inputs.Select(x => x is not null).ToArray());
            ctx.save_data("requires", inputs.Select(x => x is { requires_grad: true }).ToArray());
            ctx.save_for_backward(inputs.Where(x => x is not null).Select(x => x!).ToList());
            return segment.Forward(inputs).ToList();                // grad mode is off here: no graph, no activations
        }

        public override List<Tensor> backward(AutogradContext ctx, List<Tensor> gradOutputs)
        {
            var segment = (Segment)ctx.get_data("segment");
            var present = (bool[])ctx.get_data("present");
            var requires = (bool[])ctx.get_data("requires");
            using var scope = NewDisposeScope();
            var saved = ctx.get_saved_variables();
            var result = new List<Tensor> { null!, null! };         // no gradients for the segment and the dummy

            // 1. Recompute the segment on detached inputs, building its graph this time.
            var inputs = new Tensor?[segment.Inputs];
            for (int i = 0, s = 0; i < inputs.Length; i++)
                if (present[i]) inputs[i] = saved[s++].detach().requires_grad_(requires[i]);
            Tensor[] outputs;
            using (enable_grad()) outputs = segment.Forward(inputs);

            // 2. Back-propagate ∂L/∂y through it: parameters accumulate .grad, the detached inputs get theirs.
            var pairs = outputs.Zip(gradOutputs).Where(p => p.First.requires_grad).ToList();
            if (pairs.Count > 0)
                autograd.backward(pairs.Select(p => p.First).ToList(), pairs.Select(p => p.Second).ToList());

            // 3. ∂L/∂x for the outer graph (kept beyond this scope: the engine copies them when we return).
            foreach (var x in inputs)
                result.Add(x is { requires_grad: true } && x.grad is { } g ? g.DetachFromDisposeScope() : null!);
            return result;
        }
    }
}
