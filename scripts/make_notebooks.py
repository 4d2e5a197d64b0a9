import json, sys
def nb(cells, path):
    out=[]
    for i,(kind,src) in enumerate(cells):
        src=src.strip('\n')
        c={"cell_type":kind,"id":f"cell-{i:02d}","metadata":{}, "source":src}
        if kind=="code":
            c["metadata"]={"polyglot_notebook":{"kernelName":"csharp"}}
            c["execution_count"]=None; c["outputs"]=[]
        out.append(c)
    d={"cells":out,"metadata":{"kernelspec":{"name":".net-csharp","language":"C#","display_name":".NET (C#)"},
        "language_info":{"name":"C#","file_extension":".cs","mimetype":"text/x-csharp","pygments_lexer":"csharp"},
        "polyglot_notebook":{"kernelInfo":{"defaultKernelName":"csharp","items":[{"name":"csharp","aliases":[]}]}}},
       "nbformat":4,"nbformat_minor":5}
    json.dump(d, open(path,'w'), indent=1, ensure_ascii=False); open(path,'a').write('\n')

SETUP = r'''
// LdmLab setup (the same first cell in every notebook). Build once from the repo root: ./lab build
// On Windows use libtorch-cpu-win-x64, on Apple silicon libtorch-cpu-osx-arm64 (see environment.md).
#r "nuget: TorchSharp, 0.107.0"
#r "nuget: libtorch-cpu-linux-x64, 2.10.0"
#r "nuget: SixLabors.ImageSharp, 2.1.13"
#r "nuget: MathNet.Numerics, 5.0.0"
#r "../lib/LdmLab/bin/Release/net10.0/LdmLab.dll"
'''
tour = [
("markdown", r'''
# 00 · Tour: the lab's stack, checked

This notebook checks that everything the chapter's notebooks need works **on your machine**, and shows the
tools they use: TorchSharp tensors, the two data sets (Fashion-MNIST and real photographs), inline images and
Plotly charts, and a training loop with live progress.

Every number below is computed when the notebook runs. `LDMLAB_PROFILE` (`quick` / `full` / `gpu`) chooses the sizes.
'''),
("code", SETUP),
("markdown", r'''
## 1. The runtime bootstrap

TorchSharp 0.107 does not load as shipped on Debian 12 (its `libLibTorchSharp.so` asks for `GLIBCXX_3.4.32`),
and oneDNN computes wrong convolution input gradients on some CPUs. `TorchRuntime.Setup()` fixes both without
touching the NuGet cache, and loads TorchSharp's own LibTorch by absolute path. It prints what it did.
'''),
("code", r'''
using LdmLab.Data;
using LdmLab.Runtime;
using LdmLab.Training;
using LdmLab.Viz;
using TorchSharp;
using static TorchSharp.torch;

TorchRuntime.Setup();
Console.WriteLine(Lab.Describe());
var rng = Lab.Seed(0);
var threads = Lab.SetThreads();
'''),
("markdown", r'''
## 2. Fashion-MNIST

60 000 training and 10 000 test images, 28×28 grey, 10 classes. Read from Debian's `dataset-fashion-mnist`
package (or any folder, or downloaded with SHA-256 verification). Pixels are mapped to [-1, 1], the range the
diffusion models use.
'''),
("code", r'''
int nTrain = Lab.Pick(quick: 4000, full: 60000);
var train = FashionMnist.Load(Split.Train, limit: nTrain);
var test = FashionMnist.Load(Split.Test, limit: Lab.Pick(quick: 2000, full: 10000));
Console.WriteLine($"train {string.Join("×", train.Images.shape)}, test {string.Join("×", test.Images.shape)}, " +
                  $"pixel range [{train.Images.min().item<float>():F2}, {train.Images.max().item<float>():F2}], mean {train.Images.mean().item<float>():F3}");
Images.Grid(train.Images.narrow(0, 0, 32), nrow: 16, scale: 2, caption: "first 32 training images")
'''),
("code", r'''
// Class balance of the loaded training images
var counts = Enumerable.Range(0, 10).Select(c => (double)train.Labels.eq(c).sum().item<long>()).ToArray();
Charts.Bars("Training images per class", FashionMnist.ClassNames, counts, yTitle: "images")
'''),
("markdown", r'''
## 3. Real photographs

The autoencoder chapter also works on natural images: random 64×64 crops of the photographs in Debian's
`mate-backgrounds` package (each photo first scaled so its short side is 256 px).
'''),
("code", r'''
var photos = new ImageFolder(shortSide: 256);
var crops = photos.RandomCrops(16, 64, rng);
Console.WriteLine($"{photos.Files.Count} photos; crops {string.Join("×", crops.shape)}, range [{crops.min().item<float>():F2}, {crops.max().item<float>():F2}]");
Images.Grid(crops, nrow: 8, caption: "random 64×64 crops")
'''),
("markdown", r'''
## 4. Charts

Charts are Plotly.NET figures, displayed inline. Below: the mean brightness of each image row, per class
(trousers are bright in the middle columns all the way down; bags are bright at the bottom), and the
correlation between the class-mean images.
'''),
("code", r'''
var classMeans = Enumerable.Range(0, 10)
    .Select(c => train.Images.index_select(0, nonzero(train.Labels.eq(c)).squeeze(1)).mean([0, 1]))  // [28,28] per class
    .ToArray();
var rows = Enumerable.Range(0, 28).Select(i => (double)i).ToArray();
Charts.Lines("Row profile of the class-mean image",
    Enumerable.Range(0, 10).Select(c => new Series(FashionMnist.ClassNames[c], rows,
        classMeans[c].mean([1]).data<float>().Select(v => (double)v).ToArray())),
    xTitle: "image row", yTitle: "mean pixel value")
'''),
("code", r'''
var flat = stack(classMeans).reshape(10, -1);
var centered = flat - flat.mean([1], keepdim: true);
var unit = centered / centered.norm(1, keepdim: true);
var corr = unit.matmul(unit.T);
var z = new double[10, 10];
for (int i = 0; i < 10; i++) for (int j = 0; j < 10; j++) z[i, j] = corr[i, j].item<float>();
Charts.Heatmap("Correlation of class-mean images", z, FashionMnist.ClassNames, FashionMnist.ClassNames)
'''),
("markdown", r'''
## 5. A first training loop

A small CNN classifier (conv → GroupNorm → SiLU, three times). Each step runs inside its own
`torch.NewDisposeScope()` so native memory is released; the progress line updates while it trains.
'''),
("code", r'''
var model = new FashionClassifier(width: 16);
int steps = Lab.Pick(quick: 150, full: 1500);
var shown = display(new ProgressInfo("training", 0, steps, TimeSpan.Zero, new Dictionary<string, double>()));
var run = ClassifierTraining.Train(model, train, steps, batchSize: 64, lr: 3e-3, rng,
    new Progress("training", steps, p => shown.Update(p)));
var acc = ClassifierTraining.Accuracy(model, test.Images, test.Labels);
Console.WriteLine($"{steps} steps in {run.Elapsed.TotalSeconds:F1} s; final loss {run.Losses.TakeLast(20).Average():F3}; test accuracy {acc:P1} on {test.Count} images");
'''),
("code", r'''
var smoothed = run.Losses.Select((_, i) => run.Losses.Skip(Math.Max(0, i - 9)).Take(Math.Min(10, i + 1)).Average()).ToArray();
Charts.Lines("Training loss", new[] { Series.Of("loss", run.Losses), Series.Of("moving average (10)", smoothed) },
    xTitle: "step", yTitle: "cross-entropy")
'''),
("markdown", r'''
If every cell above ran, the lab works on this machine. Next: `01-pixel-vs-latent.ipynb`.
'''),
]
nb(tour, sys.argv[1] + "/00-tour.ipynb")
