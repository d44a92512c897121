// tapml browser bridge: executes the command stream tapml sends over a WebSocket on navigator.gpu.
// One binary message per submit: a sequence of commands (little-endian u32 fields, byte payloads padded to 4).
// Replies are binary too: [u8 kind][u8 0 0 0][u32 request][payload]. Adapter facts go once, as a text message.
"use strict";
const OP = { BUFFER: 1, DESTROY: 2, WRITE: 3, PIPELINE: 4, DISPATCH: 5, COPY: 6, READ: 7, SYNC: 8,
             PROFILE_ON: 9, PROFILE_READ: 10, PROFILE_OFF: 11, TIME_BEGIN: 12, TIME_END: 13 };
const REPLY = { READ: 1, ERROR: 2, PIPELINE: 3, SYNC: 4 };
const META_BYTES = 1 << 20;

const logEl = document.getElementById("log");
const statusEl = document.getElementById("status");
function log(s) {
  const line = `${new Date().toISOString().slice(11, 23)} ${s}\n`;
  logEl.textContent = (logEl.textContent + line).slice(-20000);
  logEl.scrollTop = logEl.scrollHeight;
}
function status(s) { statusEl.textContent = s; }

let ws, device, queue, metaBuffer;
const buffers = new Map(), pipelines = new Map(), groups = new Map();
let encoder = null, pass = null, meta = new Uint8Array(META_BYTES), metaUsed = 0, metaAlign = 256;
let dispatches = 0, submits = 0;
// GPU timestamps: a profile puts every dispatch in a pass of its own between two timestamps (slots resolved on
// PROFILE_READ); a timed region (TIME_BEGIN … TIME_END) is one pass with timestamps at its start and end.
const PROFILE_SLOTS = 1024;
let profiling = false, profSlot = 0, profQs = null, timeQs = null, tsResolve = null;

function reply(kind, request, payload) {
  const head = new Uint8Array(8);
  const v = new DataView(head.buffer);
  v.setUint8(0, kind);
  v.setUint32(4, request, true);
  if (!payload) { ws.send(head); return; }
  const out = new Uint8Array(8 + payload.byteLength);
  out.set(head, 0);
  out.set(new Uint8Array(payload.buffer ? payload.buffer : payload, payload.byteOffset || 0, payload.byteLength), 8);
  ws.send(out);
}
function replyError(request, text) { reply(REPLY.ERROR, request, new TextEncoder().encode(text)); }

// Map-read buffers for readbacks, kept by power-of-two size: a decode step reads its logits back every step.
const stagingPool = new Map();
function stagingSize(n) { let s = 256; while (s < n) s *= 2; return s; }
function takeStaging(n) {
  const size = stagingSize(n), free = stagingPool.get(size);
  if (free && free.length) return free.pop();
  return device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
}
function giveStaging(b) {
  const free = stagingPool.get(b.size) || [];
  if (free.length < 4 && b.size <= (64 << 20)) { free.push(b); stagingPool.set(b.size, free); } else b.destroy();
}

function endPass() { if (pass) { pass.end(); pass = null; } }
function submit() {
  if (!encoder) return;
  endPass();
  if (metaUsed > 0) { queue.writeBuffer(metaBuffer, 0, meta, 0, metaUsed); metaUsed = 0; }
  queue.submit([encoder.finish()]);
  encoder = null;
  submits++;
}
function enc() { if (!encoder) encoder = device.createCommandEncoder(); return encoder; }

async function run(data) {
  const v = new DataView(data);
  let at = 0;
  const u32 = () => { const x = v.getUint32(at, true); at += 4; return x; };
  const bytes = n => { const b = new Uint8Array(data, at, n); at += (n + 3) & ~3; return b; };
  const text = n => new TextDecoder().decode(bytes(n));
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");
  let request = 0;
  try {
    while (at < data.byteLength) {
      const op = u32();
      switch (op) {
        case OP.BUFFER: {
          const id = u32(), size = u32();
          buffers.set(id, device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST }));
          break;
        }
        case OP.DESTROY: { const id = u32(); const b = buffers.get(id); if (b) { b.destroy(); buffers.delete(id); groups.clear(); } break; }
        case OP.WRITE: {
          const id = u32(), offset = u32(), n = u32();
          const b = bytes(n);
          submit();   // writes run on the queue before unsubmitted work: keep the stream's order
          queue.writeBuffer(buffers.get(id), offset, b);
          break;
        }
        case OP.PIPELINE: {
          const id = u32(); request = u32();
          const label = text(u32()), code = text(u32());
          const module = device.createShaderModule({ code, label });
          try {
            const p = await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" }, label });
            pipelines.set(id, { p, layout: p.getBindGroupLayout(0), label });
            reply(REPLY.PIPELINE, request);
          } catch (e) {
            const info = await module.getCompilationInfo();
            const msgs = info.messages.map(m => `${m.type} at ${m.lineNum}:${m.linePos}: ${m.message}`).join("\n");
            replyError(request, `kernel ${label} does not compile: ${msgs || e.message}`);
          }
          break;
        }
        case OP.DISPATCH: {
          const pid = u32(), n = u32();
          const p = pipelines.get(pid);
          const entries = [];
          let key = `${pid}`;
          for (let i = 0; i < n; i++) {
            const id = u32(), offset = u32(), size = u32();
            key += `,${id}:${offset}:${size}`;
            entries.push({ binding: i, resource: { buffer: buffers.get(id), offset, size } });
          }
          const words = u32();
          const metaSize = Math.max(16, (words * 4 + 15) & ~15);
          if (metaUsed + metaSize > META_BYTES) submit();
          const metaAt = metaUsed;
          meta.set(bytes(words * 4), metaAt);
          metaUsed = Math.ceil((metaAt + metaSize) / metaAlign) * metaAlign;
          entries.push({ binding: n, resource: { buffer: metaBuffer, offset: metaAt, size: metaSize } });
          key += `|${metaAt}:${metaSize}`;
          const gx = u32(), gy = u32(), gz = u32();
          // Bind groups by pipeline, buffers and metadata slot: a decode step repeats the last one's.
          let group = groups.get(key);
          if (!group) {
            if (groups.size >= 8192) groups.clear();
            group = device.createBindGroup({ layout: p.layout, entries });
            groups.set(key, group);
          }
          if (profiling) {
            endPass();
            const i = profSlot++;
            pass = enc().beginComputePass({ timestampWrites: { querySet: profQs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
          }
          if (!pass) pass = enc().beginComputePass();
          pass.setPipeline(p.p);
          pass.setBindGroup(0, group);
          pass.dispatchWorkgroups(gx, gy, gz);
          if (profiling) endPass();
          dispatches++;
          break;
        }
        case OP.PROFILE_ON: {
          if (!profQs) profQs = device.createQuerySet({ type: "timestamp", count: 2 * PROFILE_SLOTS });
          if (!tsResolve) tsResolve = device.createBuffer({ size: 16 * PROFILE_SLOTS, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
          profiling = true; profSlot = 0;
          break;
        }
        case OP.PROFILE_OFF: profiling = false; break;
        case OP.PROFILE_READ: case OP.TIME_END: {
          request = u32();
          const timed = op === OP.TIME_END;
          const n = timed ? 1 : profSlot;
          endPass();
          const bytes = Math.max(16, 16 * n);
          const staging = takeStaging(bytes);
          if (n > 0) {
            enc().resolveQuerySet(timed ? timeQs : profQs, 0, 2 * n, tsResolve, 0);
            enc().copyBufferToBuffer(tsResolve, 0, staging, 0, 16 * n);
          }
          submit();
          if (!timed) profSlot = 0;
          const r = request;
          staging.mapAsync(GPUMapMode.READ).then(() => {
            const copy = new Uint8Array(staging.getMappedRange(0, staging.size)).slice(0, 16 * n);
            staging.unmap(); giveStaging(staging);
            reply(REPLY.READ, r, copy);
          }, e => replyError(r, `reading timestamps failed: ${e.message}`));
          break;
        }
        case OP.TIME_BEGIN: {
          if (!timeQs) timeQs = device.createQuerySet({ type: "timestamp", count: 2 });
          if (!tsResolve) tsResolve = device.createBuffer({ size: 16 * PROFILE_SLOTS, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
          endPass();
          pass = enc().beginComputePass({ timestampWrites: { querySet: timeQs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
          break;
        }
        case OP.COPY: {
          const src = u32(), so = u32(), dst = u32(), dof = u32(), n = u32();
          endPass();
          enc().copyBufferToBuffer(buffers.get(src), so, buffers.get(dst), dof, n);
          break;
        }
        case OP.READ: {
          request = u32();
          const id = u32(), offset = u32(), n = u32();
          const size = (n + 3) & ~3;
          const staging = takeStaging(size);
          endPass();
          enc().copyBufferToBuffer(buffers.get(id), offset, staging, 0, size);
          submit();
          const r = request;
          staging.mapAsync(GPUMapMode.READ).then(() => {
            const copy = new Uint8Array(staging.getMappedRange(0, size)).slice(0, n);
            staging.unmap(); giveStaging(staging);
            reply(REPLY.READ, r, copy);
          }, e => replyError(r, `readback failed: ${e.message}`));
          break;
        }
        case OP.SYNC: {
          request = u32();
          submit();
          const r = request;
          queue.onSubmittedWorkDone().then(() => reply(REPLY.SYNC, r));
          break;
        }
        default: throw new Error(`unknown command ${op} at byte ${at - 4}`);
      }
    }
    submit();   // one submit per message
  } catch (e) {
    replyError(request, `the page failed: ${e.message}`);
  }
  const oom = await device.popErrorScope();
  const bad = await device.popErrorScope();
  for (const e of [bad, oom]) if (e) { log(`error: ${e.message}`); replyError(0, `webgpu (browser): ${e.message}`); }
}

async function main() {
  if (!navigator.gpu) { status("no navigator.gpu (start the browser with WebGPU enabled)"); return; }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) { status("no WebGPU adapter"); return; }
  const want = {};
  for (const k of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupSizeX", "maxComputeInvocationsPerWorkgroup",
                   "maxComputeWorkgroupStorageSize", "maxComputeWorkgroupsPerDimension", "maxStorageBuffersPerShaderStage"]) want[k] = adapter.limits[k];
  const features = ["shader-f16", "timestamp-query"].filter(f => adapter.features.has(f));
  device = await adapter.requestDevice({ requiredLimits: want, requiredFeatures: features });
  queue = device.queue;
  metaAlign = device.limits.minStorageBufferOffsetAlignment;
  metaBuffer = device.createBuffer({ size: META_BYTES, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  const info = adapter.info || {};
  const hello = {
    vendor: info.vendor || "", architecture: info.architecture || "", device: info.device || "", description: info.description || "",
    subgroupMin: info.subgroupMinSize || 0, subgroupMax: info.subgroupMaxSize || 0, fallback: !!info.isFallbackAdapter,
    features, userAgent: navigator.userAgent,
    limits: {
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize, maxBufferSize: device.limits.maxBufferSize,
      maxComputeWorkgroupSizeX: device.limits.maxComputeWorkgroupSizeX, maxComputeInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize, maxComputeWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: device.limits.maxStorageBuffersPerShaderStage, minStorageBufferOffsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    },
  };
  const table = document.getElementById("adapter");
  for (const [k, val] of Object.entries({ ...hello, ...hello.limits, limits: undefined })) {
    if (val === undefined) continue;
    const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = String(val);
  }
  device.lost.then(i => { status(`device lost: ${i.message}`); if (ws) ws.close(4001, `device lost: ${i.message}`.slice(0, 120)); });
  const token = location.hash.startsWith("#token=") ? decodeURIComponent(location.hash.slice(7)) : "";
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  let chain = Promise.resolve();
  ws.onopen = () => { ws.send(JSON.stringify({ token, hello })); status("connected: running what tapml sends"); log("connected"); };
  ws.onmessage = ev => {
    if (typeof ev.data === "string") { log(ev.data); return; }
    chain = chain.then(() => run(ev.data));
  };
  ws.onclose = ev => { status(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reload to reconnect`); log(`closed ${ev.code} ${ev.reason}`); };
}
main().catch(e => { status(`failed: ${e.message}`); log(e.stack || String(e)); });
