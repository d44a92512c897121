using System.CommandLine;

namespace Tapml.Cli;

/// <summary>The command tree. <see cref="Run"/> is the whole CLI (tests call it in-process).</summary>
public static class App
{
    public static int Run(string[] args)
    {
        Remote.RemotePlatform.Register();
        Browser.BrowserPlatform.Register();
        var root = new RootCommand("tapml: bring ML models up on new platforms top-down (carve tests on a trusted source, replay and migrate on the target)");
        root.Options.Add(Cli.Verbose);
        root.Options.Add(Cli.MaxMemory);
        root.Subcommands.Add(PlatformsVerb.Create());
        root.Subcommands.Add(ConformanceVerb.Create());
        root.Subcommands.Add(RunVerb.Create());
        root.Subcommands.Add(GenerateVerb.Create());
        root.Subcommands.Add(BenchVerb.Create());
        root.Subcommands.Add(InspectVerb.Create());
        root.Subcommands.Add(CheckpointVerb.Create());
        root.Subcommands.Add(ExportOnnxVerb.Create());
        root.Subcommands.Add(CarveVerb.Create());
        root.Subcommands.Add(ReplayVerb.Create());
        root.Subcommands.Add(MigrateVerb.Create());
        root.Subcommands.Add(DebugVerb.Create());
        root.Subcommands.Add(SetupVerb.Create());
        root.Subcommands.Add(ServeVerb.Create());
        root.Subcommands.Add(BrowserVerb.Create());
        if (args.Length > 0 && !args[0].StartsWith('-') && root.Subcommands.All(c => c.Name != args[0]))
        {
            Console.Error.WriteLine($"error: unknown command '{args[0]}' (commands: {string.Join(", ", root.Subcommands.Select(c => c.Name))})");
            return 2;
        }
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        return parse.Invoke();
    }
}
