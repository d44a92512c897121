namespace Tapml.Core;

/// <summary>An error meant for the user: the message names the file, node or tensor and what is wrong.
/// The CLI prints <see cref="Exception.Message"/> as one line and exits with code 2.</summary>
public class TapmlException : Exception
{
    /// <summary>The longest message that reaches the user, in characters; the rest is cut with a note of how much.</summary>
    public const int MaxMessageChars = 2048;

    public TapmlException(string message) : base(Bounded(message)) { }
    public TapmlException(string message, Exception inner) : base(Bounded(message), inner) { }

    /// <summary><paramref name="s"/>, cut to <paramref name="max"/> characters with "… (N more characters)".</summary>
    public static string Bounded(string? s, int max = MaxMessageChars) =>
        s is null || s.Length <= max ? s ?? "" : $"{s[..max]}… ({s.Length - max} more characters)";
}

/// <summary>Going over the run's memory budget (<see cref="ResourceBudget"/>): ends the run with one line and exit
/// code 2, also where other errors are per case (replay, conformance).</summary>
public sealed class ResourceLimitException : TapmlException
{
    public ResourceLimitException(string message) : base(message) { }
    public ResourceLimitException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>An operator, attribute combination or dtype a platform does not implement. Reported as a
/// skip with <see cref="Exception.Message"/> as the reason, never as a pass.</summary>
public sealed class UnsupportedException : TapmlException
{
    public UnsupportedException(string reason) : base(reason) { }
}

/// <summary>The platform itself is gone (a remote server died, a connection dropped): no later operation on it can
/// succeed, so drivers stop with this one line instead of recording it against every remaining case or node.</summary>
public sealed class PlatformLostException : TapmlException
{
    public PlatformLostException(string message, Exception? inner = null) : base(message, inner!) { }
}

/// <summary>A bug of tapml's surfaced while running a node (a kernel threw something other than a
/// <see cref="TapmlException"/>): still one clear line for the user, but counted apart by tests.</summary>
public sealed class InternalErrorException : TapmlException
{
    public InternalErrorException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>One place for argument and shape errors raised by kernels and loaders.</summary>
public static class ThrowHelper
{
    public static Exception Invalid(string message) => new TapmlException(message);

    public static Exception Unsupported(string reason) => new UnsupportedException(reason);

    public static void Check(bool condition, string message)
    {
        if (!condition) throw new TapmlException(message);
    }
}
