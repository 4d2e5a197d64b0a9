using LdmLab.Runtime;

return LdmLab.Cli.Commands.Run(args);
