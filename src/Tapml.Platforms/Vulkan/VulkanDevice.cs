using System.Runtime.InteropServices;
using Silk.NET.Core.Native;
using Silk.NET.Vulkan;
using Tapml.Core;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Dialects;
using Buffer = Silk.NET.Vulkan.Buffer;

namespace Tapml.Platforms.Vulkan;

/// <summary>Vulkan compute through Silk.NET.Vulkan: the same kernels as webgpu, rendered to GLSL
/// (<see cref="GlslRenderer"/>) and compiled to SPIR-V (<see cref="Glslc"/>). Device-local buffers (pooled by size
/// bucket), uploads and readbacks through host-visible staging buffers, the metadata words (shapes, strides) as push
/// constants, or where they do not fit as a storage buffer range of a host-visible ring; buffers bound by push
/// descriptors (VK_KHR_push_descriptor) where the device has them, else by descriptor sets cached by their buffers;
/// writes copied from a persistently mapped upload ring; dispatches recorded into one command buffer, a memory barrier
/// only before a command that depends on an earlier one, submitted in batches; timestamp queries for GPU time. Buffer
/// handles given out are ids (never reused), not Vulkan handles. Choices: <see cref="VulkanOptions"/>.</summary>
public sealed unsafe class VulkanDevice : IGpuDevice, IPlatformDetails
{
    readonly Vk _vk;
    readonly VkInstanceHandle _instance;
    readonly VkDeviceHandle _device;
    PhysicalDevice _pd;
    // The device's value, for the calls of every dispatch (valid until Dispose).
    readonly Device _dev;
    Queue _queue;
    readonly uint _family;
    readonly VkObject _cmdPoolHandle, _descPoolHandle;
    readonly CommandPool _cmdPool;
    readonly DescriptorPool _descPool;
    // Every fence ever created (the free stack and the in-flight queue hold their values).
    readonly List<VkObject> _fences = new();
    bool _disposed;
    readonly uint _deviceType, _hostType, _readType;
    readonly bool _deviceHostVisible;
    readonly float _timestampPeriod;

    readonly Dictionary<nint, VkBufferHandle> _buffers = new();
    nint _nextId = 1;
    readonly BufferPool _pool = new();

    /// <summary>A compiled kernel: its metadata words as push constants (when they fit) or in the dynamic buffer.</summary>
    sealed class Variant
    {
        public int Id;
        public Pipeline Pipeline;
        public PipelineLayout Layout;
        public DescriptorSetLayout SetLayout;
        /// <summary>The pipeline, its layout and its set layout, released in that order.</summary>
        public required VkObject[] Owned;
        /// <summary>Storage buffers bound (the metadata buffer included when it is one).</summary>
        public int Bindings;
        public bool Push;
        /// <summary>Its buffers are bound by vkCmdPushDescriptorSetKHR (the set layout is a push-descriptor one).</summary>
        public bool PushDescriptors;
        /// <summary>Per binding (the metadata buffer excluded): whether the kernel may write it.</summary>
        public required bool[] Writable;
    }

    sealed class Kernel
    {
        public required string Code, Label;
        public Variant? Push, Buffer;
    }
    readonly List<Kernel> _kernels = new();
    readonly List<Variant> _variants = new();
    readonly int _pushBytes;
    readonly Dictionary<string, GpuPipeline> _pipelines = new();

    // Recording and submission.
    CommandBuffer _cb;
    bool _recording;
    // Writes ahead: ring copies recorded in a command buffer of their own that runs before the batch's (one barrier
    // after them all), the buffers they wrote, and how many there were.
    CommandBuffer _ahead;
    bool _aheadRecording;
    readonly HashSet<nint> _aheadWritten = new();
    long _aheadWrites;
    int _sinceSubmit;
    bool _timing;
    readonly VulkanOptions _opt;
    readonly HashSet<nint> _recorded = new();
    ulong _serial, _done;
    sealed record Submitted(ulong Serial, Fence Fence, CommandBuffer Cb, CommandBuffer? Ahead);
    readonly Queue<Submitted> _inFlight = new();
    readonly List<(ulong Serial, VkBufferHandle Buf)> _garbage = new();
    readonly List<VkBufferHandle> _batchTemps = new();
    readonly Stack<Fence> _freeFences = new();
    readonly Stack<CommandBuffer> _freeCbs = new();

    // Metadata words: a host-visible ring bound as a dynamic storage buffer.
    readonly VkBufferHandle _meta;
    int _metaUsed;
    readonly int _metaAlign;
    const int MetaBytes = 4 << 20, MetaSlot = 4096;

    // Push descriptors (VK_KHR_push_descriptor): the command, when the device has it and the options want it.
    readonly delegate* unmanaged<CommandBuffer, PipelineBindPoint, PipelineLayout, uint, uint, WriteDescriptorSet*, void> _cmdPushDescriptorSet;
    readonly delegate* unmanaged<Device, PipelineInfoKHR*, uint*, PipelineExecutablePropertiesKHR*, Result> _executableProperties;
    readonly delegate* unmanaged<Device, PipelineExecutableInfoKHR*, uint*, PipelineExecutableStatisticKHR*, Result> _executableStatistics;
    const int MaxPushDescriptors = 32;   // the least maxPushDescriptors the extension allows

    // Barrier tracking: buffers written, and read, by commands recorded since the last barrier.
    readonly HashSet<nint> _written = new(), _read = new();
    // Stages of the commands recorded since the last barrier.
    PipelineStageFlags _since;
    // A barrier since the last one of both stages ordered compute work only (barrier-dst=precise): a transfer takes one first.
    bool _transferOwed;

    // Writes: a host-visible ring; each submit's share is free once its fence signalled.
    readonly VkBufferHandle _upload;
    ulong _upHead, _upAllocated, _upFreed;
    readonly Queue<(ulong Serial, ulong Allocated)> _upMarks = new();
    const ulong UploadBytes = 8 << 20, UploadMax = 2 << 20;

    // Host-path counters (TAPML_VULKAN_STATS=1 prints them).
    long _pushes, _setBinds, _barriers, _commands, _ringWrites, _inlineWrites, _stagedWrites, _directWrites;

    readonly Dictionary<(int Kernel, int Hash), (DescriptorSet Set, nint[] Ids, ulong[] Offsets, ulong[] Sizes)> _sets = new();
    const int MaxSets = 4096;

    public GpuAdapterInfo Info { get; }
    public GpuLimits Limits { get; }
    public string Runtime { get; }
    public string Context { get; set; } = "";
    public long Dispatches { get; private set; }
    public long Submits { get; private set; }
    public long Readbacks { get; private set; }
    public double WaitMs { get; private set; }
    public DeviceCounters Counters => new(Dispatches, Submits, Readbacks, WaitMs, SetsMade);
    /// <summary>Descriptor sets made (a cache miss of <c>CachedSet</c>).</summary>
    public long SetsMade { get; private set; }
    public int PipelineCount => _pipelines.Count;
    /// <summary>Vulkan API version the device reports, driver name and info (for details).</summary>
    public string Driver { get; } = "";
    public string IcdFiles { get; }
    readonly string[] _details;
    public IEnumerable<string> Details() => _details;

    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);
    [DllImport("libc", EntryPoint = "unsetenv")] static extern int UnsetEnv(string name);

    /// <summary>Standard places of Vulkan driver manifests, plus chromium's SwiftShader.</summary>
    public const string SwiftShader = "/usr/lib/chromium/vk_swiftshader_icd.json";

    /// <param name="icd">"" (every installed driver), "swiftshader", "lavapipe", or a path to an ICD manifest.</param>
    /// <param name="deviceIndex">Physical device to use (-1: the best: discrete, integrated, virtual, then CPU).</param>
    /// <param name="options">Host-path choices (null: the defaults).</param>
    public VulkanDevice(string icd, int deviceIndex, long maxBindingBytes = 0, VulkanOptions? options = null)
    {
        _opt = options ?? new VulkanOptions();
        try { _vk = Vk.GetApi(); }
        catch (Exception e) when (e is DllNotFoundException or FileNotFoundException or PlatformNotSupportedException or InvalidOperationException)
        {
            throw new UnsupportedException($"vulkan: the Vulkan loader libvulkan.so.1 is not installed (apt-get install libvulkan1): {e.Message}");
        }
        if (Glslc.Unavailable() is { } noGlslc) throw new UnsupportedException(noGlslc);
        // NOTE: the loader reads VK_DRIVER_FILES when an instance is made; Dawn sets it too, so it is restored after. The
        // variable is the process's: devices made on several threads at once take turns (else one reads another's value).
        Monitor.Enter(DriverFilesLock);
        IcdFiles = "";
        string? before = Environment.GetEnvironmentVariable("VK_DRIVER_FILES");
        try
        {
            IcdFiles = IcdList(icd);
            if (IcdFiles.Length > 0) SetEnv("VK_DRIVER_FILES", IcdFiles, 1);
            var app = new ApplicationInfo { SType = StructureType.ApplicationInfo, ApiVersion = Vk.Version11 };
            var ici = new InstanceCreateInfo { SType = StructureType.InstanceCreateInfo, PApplicationInfo = &app };
            Instance inst;
            var r = _vk.CreateInstance(&ici, null, &inst);
            if (r != Result.Success) throw new UnsupportedException($"vulkan: vkCreateInstance failed: {VkNative.Name(r)}; drivers tried: {(IcdFiles.Length > 0 ? IcdFiles : "the loader's defaults")}");
            _instance = new VkInstanceHandle(_vk, inst);
        }
        finally
        {
            if (before is null) UnsetEnv("VK_DRIVER_FILES"); else SetEnv("VK_DRIVER_FILES", before, 1);
            Monitor.Exit(DriverFilesLock);
        }

        uint n = 0;
        var instance = _instance.Instance;
        Check(_vk.EnumeratePhysicalDevices(instance, &n, null), "vkEnumeratePhysicalDevices");
        if (n == 0) throw new UnsupportedException($"vulkan: no physical device (drivers tried: {(IcdFiles.Length > 0 ? IcdFiles : "the loader's defaults")})");
        var pds = new PhysicalDevice[n];
        fixed (PhysicalDevice* p = pds) Check(_vk.EnumeratePhysicalDevices(instance, &n, p), "vkEnumeratePhysicalDevices");
        int pick = deviceIndex;
        if (pick >= n) throw new UnsupportedException($"vulkan: device={deviceIndex}, but this machine has {n} Vulkan device(s)");
        if (pick < 0)
        {
            int Rank(PhysicalDevice d) { _vk.GetPhysicalDeviceProperties(d, out var pp); return pp.DeviceType switch { PhysicalDeviceType.DiscreteGpu => 0, PhysicalDeviceType.IntegratedGpu => 1, PhysicalDeviceType.VirtualGpu => 2, _ => 3 }; }
            pick = Enumerable.Range(0, (int)n).OrderBy(i => Rank(pds[i])).ThenBy(i => i).First();
        }
        _pd = pds[pick];
        _vk.GetPhysicalDeviceProperties(_pd, out var props);
        var lim = props.Limits;

        uint nq = 0;
        _vk.GetPhysicalDeviceQueueFamilyProperties(_pd, &nq, null);
        var qf = new QueueFamilyProperties[nq];
        fixed (QueueFamilyProperties* q = qf) _vk.GetPhysicalDeviceQueueFamilyProperties(_pd, &nq, q);
        int fam = Array.FindIndex(qf, q => (q.QueueFlags & QueueFlags.ComputeBit) != 0);
        if (fam < 0) throw new UnsupportedException("vulkan: the device has no compute queue");
        _family = (uint)fam;
        bool timestamps = qf[fam].TimestampValidBits > 0 && lim.TimestampPeriod > 0;
        // Subgroup shuffles in compute shaders (Vulkan 1.1's VkPhysicalDeviceSubgroupProperties).
        var sgp = new PhysicalDeviceSubgroupProperties { SType = StructureType.PhysicalDeviceSubgroupProperties };
        var p2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &sgp };
        _vk.GetPhysicalDeviceProperties2(_pd, &p2);
        bool subgroups = props.ApiVersion >= Vk.Version11 && (sgp.SupportedStages & ShaderStageFlags.ComputeBit) != 0
            && (sgp.SupportedOperations & SubgroupFeatureFlags.ShuffleBit) != 0 && sgp.SubgroupSize is >= 4 and <= 128;
        _timestampPeriod = lim.TimestampPeriod;

        uint ne = 0;
        Check(_vk.EnumerateDeviceExtensionProperties(_pd, (byte*)null, &ne, null), "vkEnumerateDeviceExtensionProperties");
        var exts = new ExtensionProperties[ne];
        fixed (ExtensionProperties* e = exts) Check(_vk.EnumerateDeviceExtensionProperties(_pd, (byte*)null, &ne, e), "vkEnumerateDeviceExtensionProperties");
        bool Has(string extension) => exts.Any(e => SilkMarshal.PtrToString((nint)e.ExtensionName) == extension);
        // An extension's feature bit, read through vkGetPhysicalDeviceFeatures2 with its structure chained.
        bool Feature<T>(string extension, T query, Func<T, bool> read) where T : unmanaged
        {
            if (!Has(extension)) return false;
            var f2 = new PhysicalDeviceFeatures2 { SType = StructureType.PhysicalDeviceFeatures2, PNext = &query };
            _vk.GetPhysicalDeviceFeatures2(_pd, &f2);
            return read(query);
        }
        bool hasPushDescriptors = Has(PushDescriptorExtension);
        bool pushDescriptors = hasPushDescriptors && _opt.PushDescriptors;
        bool hasIntegerDot = Feature(IntegerDotExtension, new PhysicalDeviceShaderIntegerDotProductFeatures { SType = StructureType.PhysicalDeviceShaderIntegerDotProductFeatures },
            q => q.ShaderIntegerDotProduct);
        IntegerDot = hasIntegerDot && _opt.IntegerDot;
        bool hasStats = Feature(ExecutableExtension, new PhysicalDevicePipelineExecutablePropertiesFeaturesKHR { SType = StructureType.PhysicalDevicePipelineExecutablePropertiesFeaturesKhr },
            q => q.PipelineExecutableInfo);
        if (_opt.ShaderStats && !hasStats) throw new UnsupportedException($"vulkan: shader-stats=on needs {ExecutableExtension} with pipelineExecutableInfo, which this device does not offer");
        bool stats = hasStats && _opt.ShaderStats;

        float prio = 1f;
        var qci = new DeviceQueueCreateInfo { SType = StructureType.DeviceQueueCreateInfo, QueueFamilyIndex = _family, QueueCount = 1, PQueuePriorities = &prio };
        string[] enabled = [.. pushDescriptors ? [PushDescriptorExtension] : Array.Empty<string>(), .. IntegerDot ? [IntegerDotExtension] : Array.Empty<string>(),
            .. stats ? [ExecutableExtension] : Array.Empty<string>()];
        var extNames = enabled.Length > 0 ? (byte**)SilkMarshal.StringArrayToPtr(enabled) : null;
        var statsFeature = new PhysicalDevicePipelineExecutablePropertiesFeaturesKHR { SType = StructureType.PhysicalDevicePipelineExecutablePropertiesFeaturesKhr, PipelineExecutableInfo = true };
        var dotFeature = new PhysicalDeviceShaderIntegerDotProductFeatures
        {
            SType = StructureType.PhysicalDeviceShaderIntegerDotProductFeatures, ShaderIntegerDotProduct = true, PNext = stats ? &statsFeature : null,
        };
        var dci = new DeviceCreateInfo
        {
            SType = StructureType.DeviceCreateInfo, QueueCreateInfoCount = 1, PQueueCreateInfos = &qci, EnabledExtensionCount = (uint)enabled.Length,
            PpEnabledExtensionNames = extNames, PNext = IntegerDot ? &dotFeature : stats ? &statsFeature : null,
        };
        Device dev;
        try { Check(_vk.CreateDevice(_pd, &dci, null, &dev), "vkCreateDevice"); }
        finally { if (extNames != null) SilkMarshal.Free((nint)extNames); }
        _device = new VkDeviceHandle(_instance, dev);
        _dev = dev;
        _vk.GetDeviceQueue(_dev, _family, 0, out _queue);
        if (pushDescriptors)
        {
            var f = _vk.GetDeviceProcAddr(_dev, "vkCmdPushDescriptorSetKHR");
            if (f.Handle == null) throw new TapmlException("vulkan: the driver lists VK_KHR_push_descriptor but gives no vkCmdPushDescriptorSetKHR; use vulkan?push-descriptors=off");
            _cmdPushDescriptorSet = (delegate* unmanaged<CommandBuffer, PipelineBindPoint, PipelineLayout, uint, uint, WriteDescriptorSet*, void>)(nint)f.Handle;
        }
        if (stats)
        {
            var fp = _vk.GetDeviceProcAddr(_dev, "vkGetPipelineExecutablePropertiesKHR");
            var fs = _vk.GetDeviceProcAddr(_dev, "vkGetPipelineExecutableStatisticsKHR");
            if (fp.Handle == null || fs.Handle == null) throw new TapmlException($"vulkan: the driver lists {ExecutableExtension} but gives no vkGetPipelineExecutable*KHR; leave shader-stats off");
            _executableProperties = (delegate* unmanaged<Device, PipelineInfoKHR*, uint*, PipelineExecutablePropertiesKHR*, Result>)(nint)fp.Handle;
            _executableStatistics = (delegate* unmanaged<Device, PipelineExecutableInfoKHR*, uint*, PipelineExecutableStatisticKHR*, Result>)(nint)fs.Handle;
        }

        _vk.GetPhysicalDeviceMemoryProperties(_pd, out var mem);
        // The first memory type with every wanted flag, preferring one with the preferred flags and without the avoided ones.
        uint Find(MemoryPropertyFlags want, MemoryPropertyFlags prefer, MemoryPropertyFlags avoid)
        {
            int best = -1, bestScore = -1;
            for (int i = 0; i < mem.MemoryTypeCount; i++)
            {
                var f = mem.MemoryTypes[i].PropertyFlags;
                if ((f & want) != want) continue;
                int score = ((f & prefer) == prefer ? 2 : 0) + ((f & avoid) == 0 ? 1 : 0);
                if (score > bestScore) { best = i; bestScore = score; }
            }
            return best < 0 ? throw new UnsupportedException($"vulkan: no memory type with {want}") : (uint)best;
        }
        // NOTE: a GPU's host-visible device memory (the BAR) is small; weights and activations go to plain device memory.
        _deviceType = Find(MemoryPropertyFlags.DeviceLocalBit, MemoryPropertyFlags.None, MemoryPropertyFlags.HostVisibleBit);
        _hostType = Find(MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit, MemoryPropertyFlags.None, MemoryPropertyFlags.DeviceLocalBit);
        _readType = Find(MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit, MemoryPropertyFlags.HostCachedBit, MemoryPropertyFlags.None);
        _deviceHostVisible = (mem.MemoryTypes[(int)_deviceType].PropertyFlags & MemoryPropertyFlags.HostVisibleBit) != 0;
        ulong heap = mem.MemoryHeaps[(int)mem.MemoryTypes[(int)_deviceType].HeapIndex].Size;

        var cpi = new CommandPoolCreateInfo { SType = StructureType.CommandPoolCreateInfo, QueueFamilyIndex = _family, Flags = CommandPoolCreateFlags.ResetCommandBufferBit };
        CommandPool cp;
        Check(_vk.CreateCommandPool(_dev, &cpi, null, &cp), "vkCreateCommandPool");
        _cmdPoolHandle = new VkObject(_device, VkKind.CommandPool, cp.Handle);
        _cmdPool = cp;
        var sizes = stackalloc DescriptorPoolSize[2];
        sizes[0] = new DescriptorPoolSize { Type = DescriptorType.StorageBuffer, DescriptorCount = MaxSets * 12 };
        sizes[1] = new DescriptorPoolSize { Type = DescriptorType.StorageBufferDynamic, DescriptorCount = MaxSets };
        var dpi = new DescriptorPoolCreateInfo { SType = StructureType.DescriptorPoolCreateInfo, MaxSets = MaxSets, PoolSizeCount = 2, PPoolSizes = sizes };
        DescriptorPool dp;
        Check(_vk.CreateDescriptorPool(_dev, &dpi, null, &dp), "vkCreateDescriptorPool");
        _descPoolHandle = new VkObject(_device, VkKind.DescriptorPool, dp.Handle);
        _descPool = dp;

        string name = SilkMarshal.PtrToString((nint)props.DeviceName) ?? "?";
        long binding = Math.Min(lim.MaxStorageBufferRange, (long)int.MaxValue);
        if (maxBindingBytes > 0) binding = Math.Min(binding, maxBindingBytes);
        Limits = new GpuLimits(binding, (long)Math.Min(heap / 2, 1UL << 40), (int)lim.MaxComputeWorkGroupSize[0], (int)lim.MaxComputeWorkGroupInvocations,
            (int)lim.MaxComputeSharedMemorySize, (int)Math.Min(lim.MaxComputeWorkGroupCount[0], Math.Min(lim.MaxComputeWorkGroupCount[1], 65535u)),
            (int)Math.Min(lim.MaxPerStageDescriptorStorageBuffers, 64u), (int)Math.Max(16, lim.MinStorageBufferOffsetAlignment));
        string vendor = props.VendorID switch { 0x10de => "nvidia", 0x1002 => "amd", 0x8086 => "intel", 0x13b5 => "arm", 0x5143 => "qualcomm", 0x1ae0 => "google", 0x10005 => "mesa", _ => $"0x{props.VendorID:x4}" };
        string api = $"{props.ApiVersion >> 22}.{(props.ApiVersion >> 12) & 0x3ff}.{props.ApiVersion & 0xfff}";
        Driver = $"Vulkan {api}, driver version 0x{props.DriverVersion:x}";
        Info = new GpuAdapterInfo(vendor, "", name, Driver, "vulkan",
            props.DeviceType switch { PhysicalDeviceType.DiscreteGpu => "discrete GPU", PhysicalDeviceType.IntegratedGpu => "integrated GPU", PhysicalDeviceType.Cpu => "CPU", PhysicalDeviceType.VirtualGpu => "virtual GPU", _ => "unknown" },
            subgroups ? (int)sgp.SubgroupSize : 0, subgroups ? (int)sgp.SubgroupSize : 0, false, timestamps, subgroups);
        Runtime = $"Vulkan loader ({(icd.Length > 0 ? icd : "installed drivers")}), GLSL through glslc";
        _metaAlign = Limits.MinStorageOffsetAlignment;
        // Metadata words go in push constants up to 64 words (256 B; every device has at least 128 B).
        _pushBytes = (int)Math.Min(lim.MaxPushConstantsSize, 256u) & ~3;
        _details =
        [
            $"device: {name} ({Info.AdapterType}, vendor {vendor} 0x{props.VendorID:x4}, device 0x{props.DeviceID:x4}), {Driver}",
            $"drivers offered to the loader: {(IcdFiles.Length > 0 ? IcdFiles : "the loader's defaults")}",
            $"limits: maxStorageBufferRange {lim.MaxStorageBufferRange}, device-local heap {heap}, maxComputeWorkGroupInvocations {lim.MaxComputeWorkGroupInvocations}, " +
            $"maxComputeWorkGroupSize {lim.MaxComputeWorkGroupSize[0]}×{lim.MaxComputeWorkGroupSize[1]}×{lim.MaxComputeWorkGroupSize[2]}, maxComputeWorkGroupCount {lim.MaxComputeWorkGroupCount[0]}, " +
            $"maxComputeSharedMemorySize {lim.MaxComputeSharedMemorySize}, maxPerStageDescriptorStorageBuffers {lim.MaxPerStageDescriptorStorageBuffers}, minStorageBufferOffsetAlignment {lim.MinStorageBufferOffsetAlignment}",
            $"features: {(timestamps ? $"timestamp queries ({_timestampPeriod} ns a tick)" : "no timestamp queries")}; " +
            $"{(hasPushDescriptors ? $"{PushDescriptorExtension}{(pushDescriptors ? "" : " (not used: push-descriptors=off)")}" : $"no {PushDescriptorExtension} (descriptor sets cached by their buffers)")}; " +
            $"{(hasIntegerDot ? $"{IntegerDotExtension}{(IntegerDot ? " (dot4I8Packed as OpSDot)" : " (not used: int-dot=off)")}" : $"no {IntegerDotExtension} (dot4I8Packed as byte products)")}; device memory {(_deviceHostVisible ? "host-visible (written directly)" : "device-only (uploads through staging)")}; " +
            $"{(subgroups ? $"subgroup shuffles (subgroup {sgp.SubgroupSize})" : "no subgroup shuffles")}",
            $"kernels: WGSL rendered to GLSL 4.50, SPIR-V from {Glslc.Find() ?? "glslc"} (cached in {Path.Combine(NpmPackages.CacheRoot(), "spirv")})",
            $"host path: barriers {(_opt.TrackedBarriers ? "only between dependent commands" : "after every command")}, writes {(_opt.UploadRing ? $"through a {UploadBytes >> 20} MiB upload ring" : "inline (vkCmdUpdateBuffer) or staged")}, {_opt.Batch} dispatches a submit",
        ];
        _meta = CreateBuffer(MetaBytes + MetaSlot, _hostType, BufferUsageFlags.StorageBufferBit, map: true);
        _upload = CreateBuffer(UploadBytes, _hostType, BufferUsageFlags.TransferSrcBit, map: true);
    }

    /// <summary>Held while an instance is made with this device's VK_DRIVER_FILES (a process-wide variable).</summary>
    static readonly object DriverFilesLock = new();
    const string PushDescriptorExtension = "VK_KHR_push_descriptor";
    const string IntegerDotExtension = "VK_KHR_shader_integer_dot_product";
    const string ExecutableExtension = "VK_KHR_pipeline_executable_properties";

    /// <summary>Kernels render <c>dot4I8Packed</c> as <c>OpSDot</c> (the device's shaderIntegerDotProduct is enabled).</summary>
    public bool IntegerDot { get; }

    static string IcdList(string icd)
    {
        if (icd == "swiftshader")
            return File.Exists(SwiftShader) ? SwiftShader : throw new UnsupportedException($"vulkan: SwiftShader's driver manifest {SwiftShader} is not here (it comes with chromium)");
        string[] dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];
        var installed = dirs.Where(Directory.Exists).SelectMany(d => Directory.GetFiles(d, "*.json")).Order().ToList();
        if (icd == "lavapipe")
            return installed.FirstOrDefault(f => Path.GetFileName(f).StartsWith("lvp_", StringComparison.Ordinal))
                ?? throw new UnsupportedException("vulkan: lavapipe is not installed (apt-get install mesa-vulkan-drivers)");
        if (icd.Length > 0) return File.Exists(icd) ? Path.GetFullPath(icd) : throw new TapmlException($"vulkan: icd={icd}: no such driver manifest");
        if (Environment.GetEnvironmentVariable("VK_ICD_FILENAMES") is { Length: > 0 } user) return user;
        // Set by the user, or by Dawn in this process (the installed drivers but lavapipe, plus SwiftShader).
        if (Environment.GetEnvironmentVariable("VK_DRIVER_FILES") is { Length: > 0 } files) return files;
        if (File.Exists(SwiftShader)) installed.Add(SwiftShader);
        return string.Join(':', installed);
    }

    /// <summary><see cref="VkNative.Check"/> with the node being recorded.</summary>
    void Check(Result r, string call, string? what = null)
    {
        if (r != Result.Success) VkNative.Check(r, call, what, Context);
    }

    void CheckUsable()
    {
        if (_disposed) throw new ObjectDisposedException("vulkan device", "vulkan: the platform was disposed; create it again");
    }

    VkBufferHandle CreateBuffer(ulong size, uint memType, BufferUsageFlags usage, bool map)
    {
        var bci = new BufferCreateInfo { SType = StructureType.BufferCreateInfo, Size = size, Usage = usage, SharingMode = SharingMode.Exclusive };
        Buffer b;
        Check(_vk.CreateBuffer(_dev, &bci, null, &b), "vkCreateBuffer", DawnDevice.Bytes((long)size));
        _vk.GetBufferMemoryRequirements(_dev, b, out var req);
        if ((req.MemoryTypeBits & (1u << (int)memType)) == 0) { _vk.DestroyBuffer(_dev, b, null); throw new TapmlException("vulkan: the buffer cannot live in the chosen memory type (internal error)"); }
        var mai = new MemoryAllocateInfo { SType = StructureType.MemoryAllocateInfo, AllocationSize = req.Size, MemoryTypeIndex = memType };
        DeviceMemory m;
        var r = _vk.AllocateMemory(_dev, &mai, null, &m);
        if (r != Result.Success) _vk.DestroyBuffer(_dev, b, null);
        Check(r, "vkAllocateMemory", DawnDevice.Bytes((long)size));
        var vb = new VkBufferHandle(_device, b, m, size);
        try
        {
            Check(_vk.BindBufferMemory(_dev, b, m, 0), "vkBindBufferMemory");
            if (map)
            {
                void* p;
                Check(_vk.MapMemory(_dev, m, 0, Vk.WholeSize, 0, &p), "vkMapMemory");
                vb.Mapped = (byte*)p;
            }
        }
        catch { vb.Dispose(); throw; }
        return vb;
    }

    static void DestroyNow(VkBufferHandle b) => b.Dispose();

    // ---- buffers ----------------------------------------------------------------------------------------------------

    public nint Allocate(ulong bytes, out ulong size, bool forWrite = false)
    {
        CheckUsable();
        var pooled = _pool.Take(bytes, out size, Limits.MaxBufferBytes, "vulkan", Context, forWrite ? _recorded.Contains : null);
        if (pooled != 0) return pooled;
        VkBufferHandle b;
        try { b = CreateBuffer(size, _deviceType, BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit, map: _deviceHostVisible); }
        catch (TapmlException) when (_pool.PooledBytes > 0)
        {
            TrimPool();
            b = CreateBuffer(size, _deviceType, BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit, map: _deviceHostVisible);
        }
        var nid = _nextId++;
        _buffers[nid] = b;
        return nid;
    }

    public void Release(nint buffer, ulong size) => _pool.Add(buffer, size);

    void TrimPool()
    {
        Flush();
        foreach (var id in _pool.Drain()) Destroy(id);
        WaitAll();
    }

    public void Destroy(nint buffer)
    {
        if (!_buffers.Remove(buffer, out var b)) return;
        if (_recorded.Contains(buffer)) Flush();
        // NOTE: submitted work may still use it: destroyed once everything submitted so far is done.
        if (_serial > _done) _garbage.Add((_serial, b));
        else DestroyNow(b);
    }

    VkBufferHandle Buf(nint id) => _buffers.TryGetValue(id, out var b) ? b : throw new TapmlException("vulkan: use of a buffer that was destroyed (internal error)");

    public void Write(nint buffer, ulong offset, ReadOnlySpan<byte> data)
    {
        long t0 = Stats ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        WriteCore(buffer, offset, data);
        if (Stats) Stat(data.Length <= 65536 ? "write ≤ 64 KiB" : "write > 64 KiB", t0);
    }

    void WriteCore(nint buffer, ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0) return;
        CheckUsable();
        var b = Buf(buffer);
        // Host-visible memory no recorded or running work uses: copy straight in.
        if (b.Mapped != null && !_recorded.Contains(buffer) && (_serial == _done || Poll() && _serial == _done))
        {
            data.CopyTo(new Span<byte>(b.Mapped + offset, data.Length));
            _directWrites++;
            return;
        }
        if (_opt.UploadRing && data.Length <= (int)UploadMax)
        {
            // NOTE: taking ring space may submit and wait (a full ring), so it comes before the recording starts.
            ulong at = UploadAlloc(data.Length);
            data.CopyTo(new Span<byte>(_upload.Mapped + at, data.Length));
            Begin();
            if (_opt.WritesAhead && _opt.TrackedBarriers && _profile is null && !_transferOwed && !_recorded.Contains(buffer) && !_aheadWritten.Contains(buffer)
                && !_written.Contains(buffer) && !_read.Contains(buffer))
            {
                // Nothing in this batch touched the buffer and no access to it waits for a barrier: the copy runs
                // before the batch, with the other copies ahead, instead of between its dispatches.
                BeginAhead();
                var ahead = new BufferCopy { SrcOffset = at, DstOffset = offset, Size = (ulong)data.Length };
                _vk.CmdCopyBuffer(_ahead, _upload.Buffer, b.Buffer, 1, &ahead);
                _aheadWritten.Add(buffer);
                _recorded.Add(buffer);
                _aheadWrites++;
                _ringWrites++;
                return;
            }
            Hazard(buffer, write: true);
            var region = new BufferCopy { SrcOffset = at, DstOffset = offset, Size = (ulong)data.Length };
            _vk.CmdCopyBuffer(_cb, _upload.Buffer, b.Buffer, 1, &region);
            _ringWrites++;
        }
        else if (data.Length <= 65536 && data.Length % 4 == 0 && offset % 4 == 0)
        {
            // Small writes travel inside the command buffer (no staging buffer).
            Begin();
            Hazard(buffer, write: true);
            fixed (byte* d = data) _vk.CmdUpdateBuffer(_cb, b.Buffer, offset, (ulong)data.Length, d);
            _inlineWrites++;
        }
        else
        {
            var staging = CreateBuffer((ulong)data.Length, _hostType, BufferUsageFlags.TransferSrcBit, map: true);
            data.CopyTo(new Span<byte>(staging.Mapped, data.Length));
            Begin();
            _batchTemps.Add(staging);
            Hazard(buffer, write: true);
            var region = new BufferCopy { SrcOffset = 0, DstOffset = offset, Size = (ulong)data.Length };
            _vk.CmdCopyBuffer(_cb, staging.Buffer, b.Buffer, 1, &region);
            _stagedWrites++;
        }
        _written.Add(buffer);
        _recorded.Add(buffer);
        _since |= PipelineStageFlags.TransferBit;
        Recorded();
    }

    /// <summary>Offset of <paramref name="bytes"/> of the upload ring that no submitted work still reads; a full ring
    /// submits what was recorded and waits for the oldest submit that reads it.</summary>
    ulong UploadAlloc(int bytes)
    {
        ulong n = ((ulong)bytes + 15) & ~15UL;
        while (true)
        {
            ulong live = _upAllocated - _upFreed;
            if (live == 0) _upHead = 0;
            // What is left past the head is skipped when the bytes do not fit there (the ring wraps).
            ulong skip = _upHead + n > UploadBytes ? UploadBytes - _upHead : 0;
            if (live + skip + n <= UploadBytes)
            {
                if (skip > 0) { _upAllocated += skip; _upHead = 0; }
                ulong at = _upHead;
                _upHead += n;
                _upAllocated += n;
                return at;
            }
            Flush();
            if (_upMarks.Count == 0) throw new TapmlException("vulkan: the upload ring is full and no submit frees it (internal error)");
            WaitFor(_upMarks.Peek().Serial);
        }
    }

    /// <summary>Before a command that touches <paramref name="buffer"/>: a barrier when a command since the last one
    /// wrote it, or read it and this one writes it.</summary>
    void Hazard(nint buffer, bool write)
    {
        if (_transferOwed || _written.Contains(buffer) || write && _read.Contains(buffer)) Barrier();
    }

    /// <summary>After a command: with <c>barriers=all</c> (or while profiling, so that kernels do not overlap), a barrier.</summary>
    void Recorded()
    {
        _commands++;
        if (!_opt.TrackedBarriers || _profile is not null) Barrier();
    }

    // ---- pipelines --------------------------------------------------------------------------------------------------

    public GpuPipeline Pipeline(string code, string label)
    {
        if (_pipelines.TryGetValue(code, out var gp)) return gp;
        CheckUsable();
        var k = new Kernel { Code = code, Label = label };
        // NOTE: most kernels' metadata fits the push constants; the buffer variant is compiled on first need.
        var first = Build(k, push: _pushBytes > 0);
        if (first.Push) k.Push = first;
        else k.Buffer = first;
        _kernels.Add(k);
        gp = new GpuPipeline(_kernels.Count - 1, _kernels.Count - 1, label, code);
        _pipelines[code] = gp;
        return gp;
    }

    /// <summary>Renders, compiles and links one variant of a kernel: metadata words as push constants (an array of
    /// <see cref="_pushBytes"/>/4 words) or as a dynamic storage buffer (the last binding).</summary>
    Variant Build(Kernel k, bool push)
    {
        var r = new GlslRenderer { PushConstantWords = push ? _pushBytes / 4 : 0, IntegerDot = IntegerDot };
        string glsl = r.Render(k.Code);
        push = r.UsesPushConstants;
        int bindings = r.StorageBindings;
        bool pushDescriptors = _cmdPushDescriptorSet != null && bindings <= MaxPushDescriptors;
        var writable = r.WritableBindings[..(push ? bindings : bindings - 1)];
        var spv = Glslc.Compile(glsl, k.Label);
        ShaderModule sm;
        fixed (byte* p = spv)
        {
            var smi = new ShaderModuleCreateInfo { SType = StructureType.ShaderModuleCreateInfo, CodeSize = (nuint)spv.Length, PCode = (uint*)p };
            Check(_vk.CreateShaderModule(_dev, &smi, null, &sm), "vkCreateShaderModule", k.Label);
        }
        using var module = new VkObject(_device, VkKind.ShaderModule, sm.Handle);
        var lb = stackalloc DescriptorSetLayoutBinding[Math.Max(1, bindings)];
        for (int i = 0; i < bindings; i++)
            lb[i] = new DescriptorSetLayoutBinding
            {
                Binding = (uint)i, DescriptorCount = 1, StageFlags = ShaderStageFlags.ComputeBit,
                // NOTE: push descriptors cannot be dynamic: the metadata range is pushed with its offset instead.
                DescriptorType = !push && !pushDescriptors && i == bindings - 1 ? DescriptorType.StorageBufferDynamic : DescriptorType.StorageBuffer,
            };
        var dli = new DescriptorSetLayoutCreateInfo
        {
            SType = StructureType.DescriptorSetLayoutCreateInfo, BindingCount = (uint)bindings, PBindings = lb,
            Flags = pushDescriptors ? DescriptorSetLayoutCreateFlags.PushDescriptorBitKhr : 0,
        };
        DescriptorSetLayout dsl;
        Check(_vk.CreateDescriptorSetLayout(_dev, &dli, null, &dsl), "vkCreateDescriptorSetLayout", k.Label);
        var setLayout = new VkObject(_device, VkKind.DescriptorSetLayout, dsl.Handle);
        VkObject? layout = null;
        try
        {
            var range = new PushConstantRange { StageFlags = ShaderStageFlags.ComputeBit, Offset = 0, Size = (uint)_pushBytes };
            var pli = new PipelineLayoutCreateInfo { SType = StructureType.PipelineLayoutCreateInfo, SetLayoutCount = 1, PSetLayouts = &dsl, PushConstantRangeCount = push ? 1u : 0u, PPushConstantRanges = &range };
            PipelineLayout pl;
            Check(_vk.CreatePipelineLayout(_dev, &pli, null, &pl), "vkCreatePipelineLayout", k.Label);
            layout = new VkObject(_device, VkKind.PipelineLayout, pl.Handle);
            var entry = "main\0"u8;
            Pipeline pipe;
            fixed (byte* e = entry)
            {
                var stage = new PipelineShaderStageCreateInfo { SType = StructureType.PipelineShaderStageCreateInfo, Stage = ShaderStageFlags.ComputeBit, Module = sm, PName = e };
                var cpi = new ComputePipelineCreateInfo
                {
                    SType = StructureType.ComputePipelineCreateInfo, Stage = stage, Layout = pl,
                    Flags = _executableStatistics != null ? PipelineCreateFlags.CreateCaptureStatisticsBitKhr : 0,
                };
                Check(_vk.CreateComputePipelines(_dev, default, 1, &cpi, null, &pipe), "vkCreateComputePipelines", k.Label);
            }
            if (_executableStatistics != null) Console.Error.WriteLine($"vulkan shader stats: {k.Label}{(push ? "" : " (metadata buffer)")}: {ShaderStats(pipe, k.Label)}");
            var owned = new[] { new VkObject(_device, VkKind.Pipeline, pipe.Handle), layout, setLayout };
            var v = new Variant { Id = _variants.Count, Pipeline = pipe, Layout = pl, SetLayout = dsl, Bindings = bindings, Push = push, PushDescriptors = pushDescriptors, Writable = writable, Owned = owned };
            _variants.Add(v);
            return v;
        }
        catch { layout?.Dispose(); setLayout.Dispose(); throw; }
    }

    /// <summary>The driver's statistics of a pipeline's executables (VK_KHR_pipeline_executable_properties: on NVIDIA
    /// the register count among them), as "name value" pairs.</summary>
    string ShaderStats(Pipeline pipe, string label)
    {
        var info = new PipelineInfoKHR { SType = StructureType.PipelineInfoKhr, Pipeline = pipe };
        uint n = 0;
        Check(_executableProperties(_dev, &info, &n, null), "vkGetPipelineExecutablePropertiesKHR", label);
        var parts = new List<string>();
        for (uint e = 0; e < n; e++)
        {
            var ei = new PipelineExecutableInfoKHR { SType = StructureType.PipelineExecutableInfoKhr, Pipeline = pipe, ExecutableIndex = e };
            uint ns = 0;
            Check(_executableStatistics(_dev, &ei, &ns, null), "vkGetPipelineExecutableStatisticsKHR", label);
            var st = new PipelineExecutableStatisticKHR[ns];
            for (int i = 0; i < st.Length; i++) st[i].SType = StructureType.PipelineExecutableStatisticKhr;
            fixed (PipelineExecutableStatisticKHR* p = st) Check(_executableStatistics(_dev, &ei, &ns, p), "vkGetPipelineExecutableStatisticsKHR", label);
            for (int i = 0; i < (int)ns; i++)
            {
                var s = st[i];
                string name = SilkMarshal.PtrToString((nint)s.Name) ?? "?";
                string value = s.Format switch
                {
                    PipelineExecutableStatisticFormatKHR.Bool32Khr => (uint)s.Value.B32 != 0u ? "true" : "false",
                    PipelineExecutableStatisticFormatKHR.Int64Khr => s.Value.I64.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    PipelineExecutableStatisticFormatKHR.Uint64Khr => s.Value.U64.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    _ => s.Value.F64.ToString("G4", System.Globalization.CultureInfo.InvariantCulture),
                };
                parts.Add($"{(n > 1 ? $"[{e}] " : "")}{name} {value}");
            }
        }
        return parts.Count == 0 ? "no statistics" : string.Join(", ", parts);
    }

    // ---- recording --------------------------------------------------------------------------------------------------

    void BeginAhead()
    {
        if (_aheadRecording) return;
        _ahead = NewCommandBuffer();
        _aheadRecording = true;
    }

    void Begin()
    {
        if (_recording) return;
        _cb = NewCommandBuffer();
        _recording = true;
    }

    /// <summary>A command buffer (a free one, else a new one), begun for one submit.</summary>
    CommandBuffer NewCommandBuffer()
    {
        CommandBuffer cb;
        if (_freeCbs.Count > 0) cb = _freeCbs.Pop();
        else
        {
            var ai = new CommandBufferAllocateInfo { SType = StructureType.CommandBufferAllocateInfo, CommandPool = _cmdPool, Level = CommandBufferLevel.Primary, CommandBufferCount = 1 };
            Check(_vk.AllocateCommandBuffers(_dev, &ai, &cb), "vkAllocateCommandBuffers");
        }
        var bi = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = CommandBufferUsageFlags.OneTimeSubmitBit };
        Check(_vk.BeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
        return cb;
    }

    /// <summary>Makes every shader and transfer write visible to every later shader and transfer access; with
    /// <paramref name="computeOnly"/> and <c>barrier-dst=precise</c>, to later shader accesses only (a later transfer
    /// takes a full barrier first).</summary>
    void Barrier(bool computeOnly = false)
    {
        const PipelineStageFlags both = PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit;
        // NOTE: the second scope covers every later command the hazard sets (cleared here) no longer guard: both stages,
        // or compute alone while _transferOwed guards transfers. The first may narrow to what ran since the last
        // barrier (which chains).
        var src = _opt.PreciseSource && _since != 0 ? _since : both;
        bool narrow = computeOnly && _opt.PreciseDestination;
        var dst = narrow ? PipelineStageFlags.ComputeShaderBit : both;
        var srcAccess = ((src & PipelineStageFlags.ComputeShaderBit) != 0 ? AccessFlags.ShaderWriteBit : 0) | ((src & PipelineStageFlags.TransferBit) != 0 ? AccessFlags.TransferWriteBit : 0);
        var dstAccess = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit | (narrow ? 0 : AccessFlags.TransferReadBit | AccessFlags.TransferWriteBit);
        _transferOwed = narrow && (_transferOwed || _since != 0);
        _barriers++;
        if (_opt.BufferBarriers && _written.Count <= MaxBufferBarriers)
        {
            var bbs = stackalloc BufferMemoryBarrier[Math.Max(1, _written.Count)];
            int n = 0;
            // NOTE: a buffer destroyed since it was written is skipped: it is destroyed once the work before is done.
            foreach (var id in _written)
                if (_buffers.TryGetValue(id, out var wb))
                    bbs[n++] = new BufferMemoryBarrier
                    {
                        SType = StructureType.BufferMemoryBarrier, SrcAccessMask = srcAccess, DstAccessMask = dstAccess,
                        SrcQueueFamilyIndex = Vk.QueueFamilyIgnored, DstQueueFamilyIndex = Vk.QueueFamilyIgnored, Buffer = wb.Buffer, Offset = 0, Size = Vk.WholeSize,
                    };
            _vk.CmdPipelineBarrier(_cb, src, dst, 0, 0, null, (uint)n, bbs, 0, null);
        }
        else
        {
            var mb = new MemoryBarrier { SType = StructureType.MemoryBarrier, SrcAccessMask = srcAccess, DstAccessMask = dstAccess };
            _vk.CmdPipelineBarrier(_cb, src, dst, 0, 1, &mb, 0, null, 0, null);
        }
        _written.Clear();
        _read.Clear();
        _since = 0;
    }

    const int MaxBufferBarriers = 64;

    /// <summary>TAPML_VULKAN_STATS=1: host time per device call kind, printed to stderr when the device is disposed.</summary>
    static readonly bool Stats = Environment.GetEnvironmentVariable("TAPML_VULKAN_STATS") == "1";
    readonly Dictionary<string, (long Calls, long Ticks)> _stats = new();
    void Stat(string what, long t0)
    {
        var (c, t) = _stats.GetValueOrDefault(what);
        _stats[what] = (c + 1, t + System.Diagnostics.Stopwatch.GetTimestamp() - t0);
    }

    public void Dispatch(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy = 1, uint gz = 1)
    {
        long t0 = Stats ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        DispatchCore(p, buffers, offsets, sizes, meta, gx, gy, gz);
        if (Stats) Stat("dispatch", t0);
    }

    void DispatchCore(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy, uint gz)
    {
        CheckUsable();
        var k = _kernels[(int)p.Id];
        bool push = meta.Length * 4 <= _pushBytes && k.Push is not null;
        var v = push ? k.Push! : k.Buffer ??= Build(k, push: false);
        int metaOffset = 0;
        if (!push)
        {
            int metaBytes = Math.Max(16, (meta.Length * 4 + 15) & ~15);
            if (metaBytes > MetaSlot) throw new UnsupportedException($"vulkan: kernel {p.Label} has {meta.Length} metadata words, over {MetaSlot / 4}");
            if (_metaUsed + metaBytes > MetaBytes)
            {
                // The ring is full: wait for the work that reads it, then start over.
                Flush();
                WaitAll();
                _metaUsed = 0;
            }
            metaOffset = _metaUsed;
            MemoryMarshal.AsBytes(meta).CopyTo(new Span<byte>(_meta.Mapped + metaOffset, meta.Length * 4));
            _metaUsed = (metaOffset + metaBytes + _metaAlign - 1) / _metaAlign * _metaAlign;
        }

        int want = v.Push ? v.Bindings : v.Bindings - 1;
        if (buffers.Length != want) throw new TapmlException($"vulkan: kernel {p.Label} binds {want} buffers, the dispatch gave {buffers.Length} (internal error)");
        var set = v.PushDescriptors ? default : CachedSet(v, buffers, offsets, sizes, p.Label);
        Begin();
        bool hazard = false;
        for (int i = 0; i < buffers.Length && !hazard; i++) hazard = _written.Contains(buffers[i]) || v.Writable[i] && _read.Contains(buffers[i]);
        if (hazard) Barrier(computeOnly: true);
        for (int i = 0; i < buffers.Length; i++)
        {
            _recorded.Add(buffers[i]);
            (v.Writable[i] ? _written : _read).Add(buffers[i]);
        }
        if (_profile is not null && !_timing) ProfileStamp(p.Label, begin: true);
        _vk.CmdBindPipeline(_cb, PipelineBindPoint.Compute, v.Pipeline);
        if (v.PushDescriptors)
        {
            int n = v.Bindings;
            var infos = stackalloc DescriptorBufferInfo[Math.Max(1, n)];
            var writes = stackalloc WriteDescriptorSet[Math.Max(1, n)];
            DescribeBindings(v, buffers, offsets, sizes, default, (ulong)metaOffset, DescriptorType.StorageBuffer, infos, writes);
            _cmdPushDescriptorSet(_cb, PipelineBindPoint.Compute, v.Layout, 0, (uint)n, writes);
            _pushes++;
        }
        else
        {
            uint dyn = (uint)metaOffset;
            _vk.CmdBindDescriptorSets(_cb, PipelineBindPoint.Compute, v.Layout, 0, 1, &set, push ? 0u : 1u, &dyn);
            _setBinds++;
        }
        if (push && meta.Length > 0)
            fixed (uint* m = meta) _vk.CmdPushConstants(_cb, v.Layout, ShaderStageFlags.ComputeBit, 0, (uint)(meta.Length * 4), m);
        _vk.CmdDispatch(_cb, gx, gy, gz);
        _since |= PipelineStageFlags.ComputeShaderBit;
        Recorded();
        if (_profile is not null && !_timing) ProfileStamp(p.Label, begin: false);
        Dispatches++;
        if (++_sinceSubmit >= _opt.Batch && !_timing) Flush();
    }

    DescriptorSet CachedSet(Variant k, ReadOnlySpan<nint> ids, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, string label)
    {
        int kernel = k.Id;
        var h = new HashCode();
        h.Add(kernel);
        for (int i = 0; i < ids.Length; i++) { h.Add(ids[i]); h.Add(offsets[i]); h.Add(sizes[i]); }
        var key = (kernel, h.ToHashCode());
        if (_sets.TryGetValue(key, out var c) && ids.SequenceEqual(c.Ids) && offsets.SequenceEqual(c.Offsets) && sizes.SequenceEqual(c.Sizes)) return c.Set;
        SetsMade++;
        if (Stats) Stat("descriptor set miss", System.Diagnostics.Stopwatch.GetTimestamp());
        if (_sets.Count >= MaxSets) { if (Stats) Stat("descriptor pool reset", System.Diagnostics.Stopwatch.GetTimestamp()); ResetSets(); }
        var layout = k.SetLayout;
        var ai = new DescriptorSetAllocateInfo { SType = StructureType.DescriptorSetAllocateInfo, DescriptorPool = _descPool, DescriptorSetCount = 1, PSetLayouts = &layout };
        DescriptorSet set;
        var r = _vk.AllocateDescriptorSets(_dev, &ai, &set);
        if (r is Result.ErrorOutOfPoolMemory or Result.ErrorFragmentedPool)
        {
            ResetSets();
            r = _vk.AllocateDescriptorSets(_dev, &ai, &set);
        }
        Check(r, "vkAllocateDescriptorSets");
        int n = k.Bindings;
        var infos = stackalloc DescriptorBufferInfo[Math.Max(1, n)];
        var writes = stackalloc WriteDescriptorSet[Math.Max(1, n)];
        DescribeBindings(k, ids, offsets, sizes, set, 0, DescriptorType.StorageBufferDynamic, infos, writes);
        _vk.UpdateDescriptorSets(_dev, (uint)n, writes, 0, null);
        _sets[key] = (set, ids.ToArray(), offsets.ToArray(), sizes.ToArray());
        return set;
    }

    /// <summary>One descriptor write per binding of <paramref name="v"/> into <paramref name="infos"/>/<paramref name="writes"/>
    /// (room for <c>v.Bindings</c>): each buffer's range, and where the metadata rides in a buffer (no push constants)
    /// the last binding is the meta ring's slot at <paramref name="metaOffset"/>, of <paramref name="metaType"/> (pushed
    /// descriptors: a plain storage buffer at the slot; cached sets: dynamic, the slot's offset given at bind).</summary>
    void DescribeBindings(Variant v, ReadOnlySpan<nint> ids, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, DescriptorSet dst,
        ulong metaOffset, DescriptorType metaType, DescriptorBufferInfo* infos, WriteDescriptorSet* writes)
    {
        int n = v.Bindings;
        for (int i = 0; i < n; i++)
        {
            bool isMeta = !v.Push && i == n - 1;
            var b = isMeta ? _meta : Buf(ids[i]);
            ulong off = isMeta ? metaOffset : offsets[i];
            infos[i] = new DescriptorBufferInfo { Buffer = b.Buffer, Offset = off, Range = isMeta ? MetaSlot : Math.Min(sizes[i], b.Size - off) };
            writes[i] = new WriteDescriptorSet
            {
                SType = StructureType.WriteDescriptorSet, DstSet = dst, DstBinding = (uint)i, DescriptorCount = 1,
                DescriptorType = isMeta ? metaType : DescriptorType.StorageBuffer, PBufferInfo = &infos[i],
            };
        }
    }

    /// <summary>Empties the descriptor pool (full): recorded work still binds its sets, so it finishes first.</summary>
    void ResetSets()
    {
        Flush();
        WaitAll();
        Check(_vk.ResetDescriptorPool(_dev, _descPool, 0), "vkResetDescriptorPool");
        _sets.Clear();
    }

    /// <summary>Submits what was recorded (with a fence), returns its serial.</summary>
    ulong Flush()
    {
        if (!_recording) return _serial;
        Check(_vk.EndCommandBuffer(_cb), "vkEndCommandBuffer");
        Fence fence;
        if (_freeFences.Count > 0) fence = _freeFences.Pop();
        else
        {
            var fi = new FenceCreateInfo { SType = StructureType.FenceCreateInfo };
            Check(_vk.CreateFence(_dev, &fi, null, &fence), "vkCreateFence");
            _fences.Add(new VkObject(_device, VkKind.Fence, fence.Handle));
        }
        CommandBuffer? ahead = null;
        if (_aheadRecording)
        {
            // The copies ahead become visible to every command of the batch at once.
            var amb = new MemoryBarrier
            {
                SType = StructureType.MemoryBarrier, SrcAccessMask = AccessFlags.TransferWriteBit,
                DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit | AccessFlags.TransferReadBit | AccessFlags.TransferWriteBit,
            };
            _vk.CmdPipelineBarrier(_ahead, PipelineStageFlags.TransferBit, PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit, 0, 1, &amb, 0, null, 0, null);
            _barriers++;
            Check(_vk.EndCommandBuffer(_ahead), "vkEndCommandBuffer");
            ahead = _ahead;
            _aheadRecording = false;
            _aheadWritten.Clear();
        }
        var cbs = stackalloc CommandBuffer[2];
        cbs[0] = ahead ?? _cb;
        cbs[1] = _cb;
        var cb = _cb;
        var si = new SubmitInfo { SType = StructureType.SubmitInfo, CommandBufferCount = ahead is null ? 1u : 2u, PCommandBuffers = cbs };
        long t0 = Stats ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        Check(_vk.QueueSubmit(_queue, 1, &si, fence), "vkQueueSubmit");
        if (Stats) Stat("vkQueueSubmit", t0);
        _recording = false;
        _serial++;
        _inFlight.Enqueue(new Submitted(_serial, fence, cb, ahead));
        if (_upMarks.Count == 0 ? _upAllocated != _upFreed : _upMarks.Last().Allocated != _upAllocated) _upMarks.Enqueue((_serial, _upAllocated));
        foreach (var t in _batchTemps) _garbage.Add((_serial, t));
        _batchTemps.Clear();
        _recorded.Clear();
        _sinceSubmit = 0;
        Submits++;
        return _serial;
    }

    /// <summary>Retires finished submits; true when at least one was checked.</summary>
    bool Poll()
    {
        while (_inFlight.Count > 0)
        {
            var s = _inFlight.Peek();
            var r = _vk.GetFenceStatus(_dev, s.Fence);
            if (r == Result.NotReady) return true;
            Check(r, "vkGetFenceStatus");
            Retire(_inFlight.Dequeue());
        }
        return true;
    }

    void Retire(Submitted s)
    {
        var f = s.Fence;
        Check(_vk.ResetFences(_dev, 1, &f), "vkResetFences");
        _freeFences.Push(f);
        Check(_vk.ResetCommandBuffer(s.Cb, 0), "vkResetCommandBuffer");
        _freeCbs.Push(s.Cb);
        if (s.Ahead is { } ahead)
        {
            Check(_vk.ResetCommandBuffer(ahead, 0), "vkResetCommandBuffer");
            _freeCbs.Push(ahead);
        }
        _done = s.Serial;
        while (_upMarks.Count > 0 && _upMarks.Peek().Serial <= s.Serial) _upFreed = _upMarks.Dequeue().Allocated;
        for (int i = _garbage.Count - 1; i >= 0; i--)
            if (_garbage[i].Serial <= _done) { DestroyNow(_garbage[i].Buf); _garbage.RemoveAt(i); }
    }

    /// <summary>Waits until the submit with <paramref name="serial"/> (and all before it) finished.</summary>
    void WaitFor(ulong serial)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        while (_done < serial && _inFlight.Count > 0)
        {
            var s = _inFlight.Peek();
            var f = s.Fence;
            Check(_vk.WaitForFences(_dev, 1, &f, true, ulong.MaxValue), "vkWaitForFences");
            Retire(_inFlight.Dequeue());
        }
        WaitMs += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
    }

    void WaitAll() => WaitFor(_serial);

    // ---- readback -----------------------------------------------------------------------------------------------

    public void Read(nint buffer, ulong offset, Span<byte> dest)
    {
        if (dest.Length == 0) return;
        var p = (PendingRead)BeginRead(buffer, offset, dest.Length);
        EndRead(p, dest);
    }

    sealed class PendingRead : GpuPendingRead
    {
        public VkBufferHandle? Staging;
        public ulong Serial;
        public int Bytes;
    }

    public GpuPendingRead BeginRead(nint buffer, ulong offset, int bytes)
    {
        CheckUsable();
        var b = Buf(buffer);
        ulong ssize = DawnDevice.Bucket((ulong)Math.Max(4, bytes));
        var staging = _readStaging.TryGetValue(ssize, out var free) && free.Count > 0 ? free.Pop() : CreateBuffer(ssize, _readType, BufferUsageFlags.TransferDstBit, map: true);
        Begin();
        Hazard(buffer, write: false);
        var region = new BufferCopy { SrcOffset = offset, DstOffset = 0, Size = (ulong)bytes };
        _vk.CmdCopyBuffer(_cb, b.Buffer, staging.Buffer, 1, &region);
        var mb = new MemoryBarrier { SType = StructureType.MemoryBarrier, SrcAccessMask = AccessFlags.TransferWriteBit, DstAccessMask = AccessFlags.HostReadBit };
        _vk.CmdPipelineBarrier(_cb, PipelineStageFlags.TransferBit, PipelineStageFlags.HostBit, 0, 1, &mb, 0, null, 0, null);
        _read.Add(buffer);
        _since |= PipelineStageFlags.TransferBit;
        Recorded();
        var serial = Flush();
        Readbacks++;
        return new PendingRead { Staging = staging, Serial = serial, Bytes = bytes };
    }

    public void EndRead(GpuPendingRead pending, Span<byte> dest)
    {
        var r = (PendingRead)pending;
        if (r.Staging is not { } s) throw new TapmlException("vulkan: a readback was waited for twice (internal error)");
        r.Staging = null;
        try
        {
            long t0 = Stats ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
            WaitFor(r.Serial);
            if (Stats) Stat("readback wait", t0);
            new ReadOnlySpan<byte>(s.Mapped, r.Bytes).CopyTo(dest);
        }
        finally
        {
            // A few staging buffers per size serve a pipeline of reads (a token per decode step); more are dropped.
            if (!_readStaging.TryGetValue(s.Size, out var free)) _readStaging[s.Size] = free = new Stack<VkBufferHandle>();
            if (free.Count < 4 && s.Size <= 64UL << 20) free.Push(s);
            else DestroyNow(s);
        }
    }

    readonly Dictionary<ulong, Stack<VkBufferHandle>> _readStaging = new();

    public void Synchronize()
    {
        CheckUsable();
        Flush();
        WaitAll();
    }

    // ---- timing -------------------------------------------------------------------------------------------------

    QueryPool _queries;
    VkObject? _queriesHandle;
    const int QuerySlots = 2048;

    void EnsureQueries()
    {
        if (_queries.Handle != 0) return;
        var qpi = new QueryPoolCreateInfo { SType = StructureType.QueryPoolCreateInfo, QueryType = QueryType.Timestamp, QueryCount = QuerySlots };
        QueryPool qp;
        Check(_vk.CreateQueryPool(_dev, &qpi, null, &qp), "vkCreateQueryPool");
        _queriesHandle = new VkObject(_device, VkKind.QueryPool, qp.Handle);
        _queries = qp;
    }

    double[] ReadStamps(int count)
    {
        var ts = new ulong[count];
        fixed (ulong* p = ts)
            Check(_vk.GetQueryPoolResults(_dev, _queries, 0, (uint)count, (nuint)(count * 8), p, 8, QueryResultFlags.Result64Bit | QueryResultFlags.ResultWaitBit), "vkGetQueryPoolResults");
        return ts.Select(t => t * (double)_timestampPeriod / 1e6).ToArray();
    }

    public double? TimeGpu(Action record)
    {
        if (!Info.TimestampQuery) return null;
        EnsureQueries();
        Synchronize();
        Begin();
        _vk.CmdResetQueryPool(_cb, _queries, 0, 2);
        _vk.CmdWriteTimestamp(_cb, PipelineStageFlags.TopOfPipeBit, _queries, 0);
        _timing = true;
        try { record(); }
        finally { _timing = false; }
        Begin();
        _vk.CmdWriteTimestamp(_cb, PipelineStageFlags.BottomOfPipeBit, _queries, 1);
        Synchronize();
        var t = ReadStamps(2);
        return Math.Max(0, t[1] - t[0]);
    }

    Dictionary<string, (long Calls, double Ms)>? _profile;
    readonly List<string> _profileLabels = new();

    /// <summary>Timestamps around every dispatch from now on, attributed to kernel labels (<see cref="StopProfile"/>).</summary>
    public bool StartProfile()
    {
        if (!Info.TimestampQuery) return false;
        EnsureQueries();
        Synchronize();
        _profile = new();
        return true;
    }

    void ProfileStamp(string label, bool begin)
    {
        if (begin)
        {
            if (_profileLabels.Count * 2 + 2 > QuerySlots) CollectProfile();
            Begin();
            int slot = _profileLabels.Count * 2;
            _vk.CmdResetQueryPool(_cb, _queries, (uint)slot, 2);
            _vk.CmdWriteTimestamp(_cb, PipelineStageFlags.TopOfPipeBit, _queries, (uint)slot);
            _profileLabels.Add(label);
        }
        else _vk.CmdWriteTimestamp(_cb, PipelineStageFlags.BottomOfPipeBit, _queries, (uint)(_profileLabels.Count * 2 - 1));
    }

    void CollectProfile()
    {
        Synchronize();
        if (_profileLabels.Count == 0 || _profile is null) return;
        var t = ReadStamps(_profileLabels.Count * 2);
        for (int i = 0; i < _profileLabels.Count; i++)
        {
            var (c, ms) = _profile.GetValueOrDefault(_profileLabels[i]);
            _profile[_profileLabels[i]] = (c + 1, ms + Math.Max(0, t[2 * i + 1] - t[2 * i]));
        }
        _profileLabels.Clear();
    }

    public List<(string Kernel, long Calls, double Ms)> StopProfile()
    {
        CollectProfile();
        var r = (_profile ?? new()).Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(t => t.Ms).ToList();
        _profile = null;
        return r;
    }

    /// <summary>Waits for the device, then releases what it holds; the device and the instance go last (every
    /// object made from them holds a reference on their handles). A second call does nothing; buffers freed
    /// afterwards are ignored.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        if (Stats)
            foreach (var (what, (calls, ticks)) in _stats.OrderByDescending(kv => kv.Value.Ticks))
                Console.Error.WriteLine($"vulkan stats: {what}: {calls} calls, {ticks * 1000.0 / System.Diagnostics.Stopwatch.Frequency:F1} ms, {ticks * 1e6 / System.Diagnostics.Stopwatch.Frequency / Math.Max(1, calls):F2} µs/call");
        if (Stats)
        {
            Console.Error.WriteLine($"vulkan stats: {_commands} commands (dispatches, copies), {_barriers} barriers ({_commands - _barriers} commands without one{(_opt.TrackedBarriers ? "" : ", barriers=all")}); " +
                $"{Dispatches} dispatches: {_pushes} with push descriptors, {_setBinds} with descriptor sets; {Submits} submits");
            Console.Error.WriteLine($"vulkan stats: writes: {_ringWrites} through the upload ring ({_aheadWrites} of them ahead of their batch), {_inlineWrites} inline (vkCmdUpdateBuffer), {_stagedWrites} through a staging buffer each, {_directWrites} into mapped device memory");
        }
        try { Synchronize(); } catch (TapmlException) { }
        _disposed = true;
        // NOTE: its status does not matter: a lost device has nothing left running either.
        _ = _vk.DeviceWaitIdle(_dev);
        foreach (var (_, b) in _garbage) DestroyNow(b);
        _garbage.Clear();
        foreach (var b in _batchTemps) DestroyNow(b);
        foreach (var free in _readStaging.Values) foreach (var b in free) DestroyNow(b);
        foreach (var b in _buffers.Values) DestroyNow(b);
        _buffers.Clear();
        DestroyNow(_meta);
        DestroyNow(_upload);
        _pool.Drain();
        foreach (var k in _variants) foreach (var h in k.Owned) h.Dispose();
        _variants.Clear();
        _kernels.Clear();
        _pipelines.Clear();
        foreach (var f in _fences) f.Dispose();
        _fences.Clear();
        _freeFences.Clear();
        _inFlight.Clear();
        _queriesHandle?.Dispose();
        _descPoolHandle.Dispose();
        _cmdPoolHandle.Dispose();
        _device.Dispose();
        _instance.Dispose();
    }
}
