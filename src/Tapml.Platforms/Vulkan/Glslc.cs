using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.Vulkan;

/// <summary>GLSL → SPIR-V with shaderc's <c>glslc</c> (apt <c>glslc</c>), results cached on disk by the hash of the
/// source (<c>$cache/spirv/</c>): a kernel compiles once per machine.</summary>
/// <remarks>NOTE: a process per kernel, not libshaderc through P/Invoke: Debian 12's libshaderc1 does not load
/// alone (undefined symbol <c>spvtools::utils::Timer</c>'s vtable, which the glslc executable itself provides).</remarks>
public static class Glslc
{
    /// <summary>The compiler: <c>$TAPML_GLSLC</c>, else <c>glslc</c> on PATH; null when there is none.</summary>
    public static string? Find()
    {
        if (Environment.GetEnvironmentVariable("TAPML_GLSLC") is { Length: > 0 } env) return File.Exists(env) ? env : null;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, "glslc"))) return Path.Combine(dir, "glslc");
        return null;
    }

    /// <summary>Why GLSL cannot be compiled here, or null.</summary>
    public static string? Unavailable() => Find() is null
        ? "vulkan: glslc is not installed (apt-get install glslc): GLSL kernels cannot be compiled to SPIR-V" : null;

    /// <summary>SPIR-V of a GLSL compute shader (from the disk cache when it was compiled before).</summary>
    public static byte[] Compile(string glsl, string label)
    {
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(glsl)));
        string dir = Path.Combine(NpmPackages.CacheRoot(), "spirv");
        string file = Path.Combine(dir, hash[..32] + ".spv");
        if (File.Exists(file)) return File.ReadAllBytes(file);
        string exe = Find() ?? throw new UnsupportedException(Unavailable()!);
        Directory.CreateDirectory(dir);
        string tmp = file + $".{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        var psi = new ProcessStartInfo(exe) { RedirectStandardInput = true, RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        // NOTE: subgroup operations need SPIR-V 1.3 (Vulkan 1.1); every other kernel stays at 1.0 (its cached SPIR-V unchanged).
        string env = glsl.Contains("GL_KHR_shader_subgroup", StringComparison.Ordinal) ? "vulkan1.1" : "vulkan1.0";
        foreach (var a in new[] { "-fshader-stage=compute", $"--target-env={env}", "-O", "-o", tmp, "-" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new TapmlException($"vulkan: cannot start {exe}");
        var err = p.StandardError.ReadToEndAsync();
        p.StandardInput.Write(glsl);
        p.StandardInput.Close();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0 || !File.Exists(tmp))
        {
            File.Delete(tmp);
            throw new TapmlException($"vulkan: kernel {label} does not compile as GLSL: {err.Result.Trim()}\n--- GLSL ---\n{glsl}");
        }
        File.Move(tmp, file, overwrite: true);
        return File.ReadAllBytes(file);
    }
}
