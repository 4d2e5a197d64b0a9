// The Labs build experiments out of every part of the library; these are the parts they use.
global using LdmLab.Autoencoders;
global using LdmLab.Conditioning;
global using LdmLab.Data;
global using LdmLab.Diffusion;
global using LdmLab.Diffusion.Schedulers;
global using LdmLab.Interop;
global using LdmLab.Metrics;
global using LdmLab.Nn;
global using LdmLab.Pipelines;
global using LdmLab.Runtime;
global using LdmLab.Training;
global using LdmLab.UNet;
global using TorchSharp;
global using static TorchSharp.torch;
