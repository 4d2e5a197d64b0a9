using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>
/// How <see cref="TiledAutoencoder"/> cuts an image or a latent into tiles (diffusers' <c>enable_vae_tiling</c>):
/// tiles of <see cref="TileSampleSize"/> pixels (tile_sample_min_size, default the VAE's sample_size) and
/// TileSampleSize / f latents (tile_latent_min_size), neighbours overlapping by <see cref="OverlapFactor"/> of a
/// tile (tile_overlap_factor 0.25). The latent stride is ⌊tile_latent·(1 − overlap)⌋ and the pixel stride f times
/// it; each tile keeps its first stride and the rest of it is blended into the next tile. For SD's 512/64 tiles
/// this is diffusers' arithmetic exactly (stride 48 latents = 384 pixels, blend 128 pixels / 16 latents); for tiles
/// where diffusers' int() roundings disagree (28 px at f = 4: stride 5 latents but row_limit 21 px) the kept part is
/// the stride, so the output always has f times the latent's size.
/// </summary>
public sealed record VaeTiling
{
    /// <summary>Tile side in pixels (a multiple of the downsampling factor).</summary>
    public int TileSampleSize { get; init; } = 512;
    /// <summary>Fraction of a tile shared with its neighbour: in [0, 1).</summary>
    public double OverlapFactor { get; init; } = 0.25;
    /// <summary>False: the overlaps are computed but cut off instead of blended (the seam the blend hides).</summary>
    public bool Blend { get; init; } = true;

    /// <summary>diffusers' defaults for a VAE: tiles of its sample_size, overlap 0.25.</summary>
    public static VaeTiling For(AutoencoderKLConfig config) => new() { TileSampleSize = config.SampleSize };

    /// <summary>Tile side in latents for a downsampling factor f.</summary>
    public int TileLatentSize(int f) => TileSampleSize / f;

    /// <summary>Latent stride: ⌊tile_latent · (1 − overlap)⌋ (at least 1).</summary>
    public int LatentStride(int f) => Math.Max(1, (int)(TileLatentSize(f) * (1 - OverlapFactor)));

    /// <summary>Checks the settings against a downsampling factor; the error names the field.</summary>
    public void Validate(int f)
    {
        if (TileSampleSize < f || TileSampleSize % f != 0)
            throw new ArgumentException($"VaeTiling.TileSampleSize {TileSampleSize} must be a positive multiple of " +
                                        $"the VAE's downsampling factor {f}", nameof(TileSampleSize));
        if (OverlapFactor is < 0 or >= 1 || double.IsNaN(OverlapFactor))
            throw new ArgumentException($"VaeTiling.OverlapFactor {OverlapFactor} must lie in [0, 1)",
                nameof(OverlapFactor));
    }

    /// <summary>
    /// Where the decoded tiles of an image <paramref name="size"/> pixels long meet along one axis: k · stride (the
    /// cut), and with blending also k · stride + blend (where the ramp ends). What <c>SeamMeasure</c> looks at.
    /// </summary>
    public IReadOnlyList<int> Borders(int size, int f)
    {
        int stride = LatentStride(f) * f, blend = TileLatentSize(f) * f - stride;
        var borders = new SortedSet<int>();
        for (int at = stride; at < size; at += stride)
        {
            borders.Add(at);
            if (Blend && blend > 0 && at + blend < size) borders.Add(at + blend);
        }
        return borders.ToList();
    }
}

/// <summary>
/// Tiled VAE encoding and decoding (diffusers' AutoencoderKL.tiled_encode / tiled_decode), so that an image of any
/// size passes through the autoencoder with the memory of one tile. Tiles are taken every stride from the top-left
/// (the last ones may be partial), each is encoded or decoded alone, then every tile is blended with the tile above
/// it and the tile to its left over the overlap, a linear ramp in the row (column) y of the overlap of length E:
/// <code>b[y] = a[−E + y] · (1 − y/E) + b[y] · (y/E)      (the weights sum to one)</code>
/// and its first stride rows and columns are kept. The result differs from untiled decoding near the seams (a
/// tile's convolutions see zero padding where the untiled image has neighbours) — diffusers says so too.
/// </summary>
public static class TiledAutoencoder
{
    /// <summary>
    /// Latents z [B, c, h, w] (already divided by the scaling factor) → images [B, C, f·h, f·w]. A latent that fits
    /// in one tile is decoded directly, as diffusers' <c>_decode</c> does.
    /// </summary>
    public static Tensor TiledDecode(this AutoencoderKL vae, Tensor z, VaeTiling? tiling = null)
    {
        var t = tiling ?? VaeTiling.For(vae.Config);
        int f = vae.Config.DownsamplingFactor;
        t.Validate(f);
        int tile = t.TileLatentSize(f), stride = t.LatentStride(f);
        if (z.shape[2] <= tile && z.shape[3] <= tile) return vae.Decode(z);
        return Tiled(z, tile, stride, tile * f, stride * f, t.Blend, piece => vae.Decode(piece));
    }

    /// <summary>
    /// Images x [B, C, H, W] (H, W multiples of f) → the posterior over latents [B, c, H/f, W/f], the moments
    /// blended across tiles as diffusers' tiled_encode blends them; an image that fits in one tile is encoded
    /// directly.
    /// </summary>
    public static DiagonalGaussian TiledEncode(this AutoencoderKL vae, Tensor x, VaeTiling? tiling = null)
    {
        var t = tiling ?? VaeTiling.For(vae.Config);
        int f = vae.Config.DownsamplingFactor;
        t.Validate(f);
        if (x.shape[2] % f != 0 || x.shape[3] % f != 0)
            throw new ArgumentException($"image sides must be multiples of {f}, got {x.shape[2]}×{x.shape[3]}",
                nameof(x));
        if (x.shape[2] <= t.TileSampleSize && x.shape[3] <= t.TileSampleSize) return vae.Encode(x);
        int stride = t.LatentStride(f);
        return new DiagonalGaussian(Tiled(x, t.TileSampleSize, stride * f, t.TileLatentSize(f), stride, t.Blend,
            tile =>
            {
                var q = vae.Encode(tile);
                return cat([q.Mean, q.LogVar], 1);                                       // moments [b, 2c, h, w]
            }));
    }

    /// <summary>
    /// The tiling itself, for any map of tiles: tiles of <paramref name="tileIn"/> every <paramref name="strideIn"/>
    /// along both spatial axes of <paramref name="input"/> [B, C, H, W], each mapped; tile (i, j) blended with
    /// (i − 1, j) and then with (i, j − 1) (both already blended, as diffusers' in-place blend_v / blend_h leave
    /// them) over E = <paramref name="tileOut"/> − <paramref name="strideOut"/> (a full tile's mapped side less
    /// the stride it keeps), then cut to its first strideOut rows and columns.
    /// </summary>
    public static Tensor Tiled(Tensor input, int tileIn, int strideIn, int tileOut, int strideOut, bool blend,
        Func<Tensor, Tensor> map)
    {
        if (tileIn < 1 || strideIn < 1 || strideOut < 1 || strideIn > tileIn || strideOut > tileOut)
            throw new ArgumentException($"need 1 ≤ stride ≤ tile in and out (in: {strideIn} of {tileIn}, out: " +
                                        $"{strideOut} of {tileOut})", nameof(strideIn));
        int extent = tileOut - strideOut;
        long height = input.shape[2], width = input.shape[3];
        var grid = new List<Tensor[]>();
        for (long i = 0; i < height; i += strideIn)
        {
            var row = new List<Tensor>();
            for (long j = 0; j < width; j += strideIn)
            {
                // each tile's intermediates are freed before the next tile: the memory of one tile, not of all
                using var scope = NewDisposeScope();
                row.Add(map(input.narrow(2, i, Math.Min(tileIn, height - i))
                    .narrow(3, j, Math.Min(tileIn, width - j))).MoveToOuterDisposeScope());  // [B, C', ≤ t, ≤ t]
            }
            grid.Add(row.ToArray());
        }
        var rows = new List<Tensor>();
        for (int i = 0; i < grid.Count; i++)
        {
            var kept = new List<Tensor>();
            for (int j = 0; j < grid[i].Length; j++)
            {
                var tile = grid[i][j];
                if (blend && i > 0) tile = BlendV(grid[i - 1][j], tile, extent);
                if (blend && j > 0) tile = BlendH(grid[i][j - 1], tile, extent);
                grid[i][j] = tile;
                kept.Add(tile.narrow(2, 0, Math.Min(strideOut, tile.shape[2]))
                    .narrow(3, 0, Math.Min(strideOut, tile.shape[3])));
            }
            rows.Add(cat(kept.ToArray(), 3));
        }
        return cat(rows.ToArray(), 2);
    }

    /// <summary>The ramp y/E, y = 0 … E − 1, that b gets (a gets 1 − y/E): [E].</summary>
    public static Tensor RampWeights(int extent, ScalarType dtype = ScalarType.Float32, Device? device = null) =>
        arange(extent, dtype: dtype, device: device) / extent;

    /// <summary>diffusers' blend_v: the first E rows of b faded in over the last E rows of a (a above b). E is cut to
    /// both tiles' heights; E ≤ 0 returns b.</summary>
    public static Tensor BlendV(Tensor a, Tensor b, int extent) => Blend(a, b, extent, 2);

    /// <summary>diffusers' blend_h: the first E columns of b faded in over the last E columns of a (a left of
    /// b).</summary>
    public static Tensor BlendH(Tensor a, Tensor b, int extent) => Blend(a, b, extent, 3);

    static Tensor Blend(Tensor a, Tensor b, int extent, int dim)
    {
        int e = (int)Math.Min(extent, Math.Min(a.shape[dim], b.shape[dim]));
        if (e <= 0) return b;
        var shape = new long[] { 1, 1, 1, 1 };
        shape[dim] = e;
        var w = RampWeights(e, b.dtype, b.device).reshape(shape);                  // [1, 1, E, 1] or [1, 1, 1, E]
        var head = a.narrow(dim, a.shape[dim] - e, e) * (1 - w) + b.narrow(dim, 0, e) * w;
        return e == b.shape[dim] ? head : cat([head, b.narrow(dim, e, b.shape[dim] - e)], dim);
    }
}
