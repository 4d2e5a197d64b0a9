namespace LdmLab.Labs;

/// <summary>
/// The Fréchet distance of image sets to one fixed set of real images, in the judge's feature space: the reference
/// features are computed once, each scored set's on demand. Real images scored the same way give the floor a
/// perfect model reaches with as many samples.
/// </summary>
public sealed class FrechetReference
{
    readonly FashionClassifier _judge;
    readonly double[,] _reference;

    /// <param name="judge">The classifier, trained on real images only.</param>
    /// <param name="referenceImages">Real items [N, 1, 28, 28] in [−1, 1].</param>
    public FrechetReference(FashionClassifier judge, Tensor referenceImages)
    {
        _judge = judge;
        _reference = ClassifierRecipe.FeatureMatrix(judge, referenceImages);              // [N, D]
    }

    /// <summary>D, the feature dimension: sets much smaller than 2·D give distances with a large small-sample bias.
    /// </summary>
    public int FeatureDims => _reference.GetLength(1);

    /// <summary>Fréchet distance of <paramref name="items"/> [n, 1, 28, 28] to the reference set.</summary>
    public double Of(Tensor items) =>
        FrechetDistance.Compute(ClassifierRecipe.FeatureMatrix(_judge, items), _reference);
}
