using Xunit;
using System.Text.Json.Nodes;

namespace DGrab.Tests;

public class CliTests
{
    public static TheoryData<string, string> BadArguments => new()
    {
        { "train --order grab", "unknown --order 'grab'" },
        { "train --model cnn", "unknown --model 'cnn'" },
        { "train --workers 4 --batch 10", "--batch (10) must be a positive multiple of --workers (4)" },
        { "train --order cd-grab --workers 4 --batch 12", "--batch / --workers must be even" },
        { "train --lr -1", "--lr must be a positive number" },
        { "train --lr abc", "--lr: 'abc' is not a valid value" },
        { "train --engine tcp", "unknown --engine 'tcp'" },
        { "train --dataset cifar10", "unknown --dataset 'cifar10'" },
        { "train --epochs x", "epochs" },
        { "simulate-herding", "--workers" },
        { "simulate-herding --workers 3 --vectors 100", "--vectors (100) must split into even shards" },
        { "simulate-herding --workers 0", "--workers must be at least 1" },
        { "fly", "unknown command 'fly'" },
    };

    [Theory]
    [MemberData(nameof(BadArguments))]
    public void A_bad_argument_is_one_clear_line_and_exit_2(string args, string expected)
    {
        var r = DGrabCli.Run(args.Split(' '));
        Assert.Equal(2, r.ExitCode);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void A_missing_data_set_is_one_line_naming_the_folder_and_the_package_and_exit_2()
    {
        var folder = Path.Combine(Path.GetTempPath(), $"dgrab-no-data-{Guid.NewGuid():N}");
        var r = DGrabCli.Run("train", "--data", folder, "--epochs", "1");
        Assert.Equal(2, r.ExitCode);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(folder, line);
        Assert.Contains("dataset-fashion-mnist", line);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void Simulate_herding_writes_the_rounds_json_and_an_svg()
    {
        var dir = Directory.CreateTempSubdirectory("dgrab-herding-").FullName;
        var r = DGrabCli.Run("simulate-herding", "--workers", "4", "--vectors", "4000", "--rounds", "3", "--dim", "4",
            "--json", Path.Combine(dir, "h.json"), "--plot", Path.Combine(dir, "h.svg"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        var rounds = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "h.json")))!["rounds"]!.AsArray();
        Assert.Equal(4, rounds.Count);
        foreach (var key in new[] { "round", "cd_grab", "id_grab_bal", "id_grab_pairbal", "d_rr" }) Assert.NotNull(rounds[3]![key]);
        Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(dir, "h.svg")));
        Directory.Delete(dir, true);
    }
}
