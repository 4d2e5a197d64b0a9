namespace LdmLab.Cli; static class NotebooksCommand { public static int Run(string[] a) => 0; }
