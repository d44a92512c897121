namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Random-number operators: the reference platform cannot reproduce another generator's draws, so
/// these are a clear "unsupported" verdict (a skip), never a wrong answer.</summary>
public sealed class RandomOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        foreach (var op in new[] { "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial" })
            r.Add(op, (ctx, _) => throw ctx.Unsupported("random: the op draws random numbers, which the reference platform does not reproduce"),
                (_, _) => "random: the op draws random numbers, which the reference platform does not reproduce");
    }
}
