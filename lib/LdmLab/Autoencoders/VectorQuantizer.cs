using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>What one quantisation produced.</summary>
public sealed record QuantizerOutput(Tensor Quantized, Tensor Indices, Tensor CodebookLoss, Tensor CommitmentLoss, double Perplexity, double Usage);

/// <summary>
/// The VQ-VAE bottleneck (van den Oord et al. 2017) with the names of diffusers' VectorQuantizer (quantize.embedding):
/// each latent vector z_e is replaced by its nearest codebook entry e_k, k = argmin ‖z_e − e_k‖²; gradients pass
/// straight through (z_q = z_e + sg(e_k − z_e)); the commitment loss β‖z_e − sg(e_k)‖² keeps the encoder near its codes.
/// The codebook learns either by the codebook loss ‖sg(z_e) − e_k‖² or by EMA of assigned vectors (Razavi et al.),
/// and codes unused for a while are restarted at random encoder outputs (codebook collapse is the known failure).
/// </summary>
public sealed class VectorQuantizer : nn.Module
{
    readonly Embedding embedding;
    public int NumCodes { get; }
    public int Dim { get; }
    public double Beta { get; }
    public bool UseEma { get; }
    public double EmaDecay { get; }
    Tensor _clusterSize, _embedSum;
    readonly long[] _lastUsedStep;
    long _step;

    /// <summary>Usage counts since the last <see cref="ResetUsage"/>.</summary>
    public long[] UsageCounts { get; }

    public VectorQuantizer(int numCodes, int dim, double beta = 0.25, bool useEma = true, double emaDecay = 0.99) : base(nameof(VectorQuantizer))
    {
        embedding = nn.Embedding(numCodes, dim);
        using (no_grad()) embedding.weight!.uniform_(-1.0 / numCodes, 1.0 / numCodes);
        NumCodes = numCodes; Dim = dim; Beta = beta; UseEma = useEma; EmaDecay = emaDecay;
        _clusterSize = zeros(numCodes);
        _embedSum = embedding.weight!.detach().clone();
        _lastUsedStep = new long[numCodes];
        UsageCounts = new long[numCodes];
        RegisterComponents();
        if (useEma) embedding.weight!.requires_grad_(false);
    }

    public Tensor Codebook => embedding.weight!;

    public void ResetUsage() => Array.Clear(UsageCounts);

    /// <summary>Quantises z [B, D, H, W]; updates the EMA codebook when training.</summary>
    public QuantizerOutput Forward(Tensor z)
    {
        if (z.shape[1] != Dim) throw new ArgumentException($"latent has {z.shape[1]} channels, the codebook {Dim}");
        var flat = z.permute(0, 2, 3, 1).reshape(-1, Dim);                                   // [BHW, D]
        var w = embedding.weight!;
        var d = flat.pow(2).sum(1, keepdim: true) - 2 * flat.matmul(w.T) + w.pow(2).sum(1).unsqueeze(0);
        var idx = d.argmin(1);                                                                 // [BHW]
        var q = w.index_select(0, idx).reshape(z.shape[0], z.shape[2], z.shape[3], Dim).permute(0, 3, 1, 2);

        var counts = bincount(idx, minlength: NumCodes).to_type(ScalarType.Float32).cpu();
        var countArr = counts.data<float>().ToArray();
        for (int k = 0; k < NumCodes; k++) UsageCounts[k] += (long)countArr[k];
        var probs = counts / Math.Max(1, idx.shape[0]);
        double perplexity = (-(probs * (probs + 1e-10).log()).sum()).exp().item<float>();
        double usage = countArr.Count(c => c > 0) / (double)NumCodes;

        if (training && UseEma) EmaUpdate(flat.detach(), idx, counts);
        var commitment = Beta * (z - q.detach()).pow(2).mean();
        var codebook = UseEma ? zeros(1).squeeze() : (z.detach() - q).pow(2).mean();
        var straightThrough = z + (q - z).detach();
        return new QuantizerOutput(straightThrough, idx.reshape(z.shape[0], z.shape[2], z.shape[3]), codebook, commitment, perplexity, usage);
    }

    /// <summary>N_k ← γN_k + (1−γ)n_k, m_k ← γm_k + (1−γ)Σ z, e_k = m_k / N̂_k (Laplace-smoothed).</summary>
    void EmaUpdate(Tensor flat, Tensor idx, Tensor counts)
    {
        using var _ = no_grad();
        _step++;
        var onehot = nn.functional.one_hot(idx, NumCodes).to_type(flat.dtype);                // [BHW, K]
        _clusterSize.mul_(EmaDecay).add_(counts.to(_clusterSize.device), alpha: 1 - EmaDecay);
        _embedSum.mul_(EmaDecay).add_(onehot.T.matmul(flat).to(_embedSum.device), alpha: 1 - EmaDecay);
        var n = _clusterSize.sum();
        var smoothed = (_clusterSize + 1e-5) / (n + NumCodes * 1e-5) * n;
        embedding.weight!.copy_((_embedSum / smoothed.unsqueeze(1)).to(embedding.weight!.device));
        var c = counts.data<float>().ToArray();
        for (int k = 0; k < NumCodes; k++) if (c[k] > 0) _lastUsedStep[k] = _step;
    }

    /// <summary>Re-initialises codes unused for <paramref name="patience"/> updates at random encoder outputs; returns how many.</summary>
    public int RestartDeadCodes(Tensor encoderOutputs, int patience, Random rng)
    {
        var flat = encoderOutputs.detach().permute(0, 2, 3, 1).reshape(-1, Dim);
        int restarted = 0;
        using var _ = no_grad();
        for (int k = 0; k < NumCodes; k++)
        {
            if (_step - _lastUsedStep[k] < patience) continue;
            var v = flat[rng.Next((int)flat.shape[0])];
            embedding.weight![k] = v;
            _embedSum[k] = v.to(_embedSum.device);
            _clusterSize[k] = 1.0f;
            _lastUsedStep[k] = _step;
            restarted++;
        }
        return restarted;
    }

    /// <summary>Codebook usage statistics of <see cref="UsageCounts"/>: fraction of codes used and perplexity exp(H).</summary>
    public (double usage, double perplexity) UsageStatistics()
    {
        double total = UsageCounts.Sum();
        if (total == 0) return (0, 0);
        double h = -UsageCounts.Where(c => c > 0).Sum(c => c / total * Math.Log(c / total));
        return (UsageCounts.Count(c => c > 0) / (double)NumCodes, Math.Exp(h));
    }
}
