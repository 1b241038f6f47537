// Command-line driver of the emulated flash attention (see emu.h), used by
// tests/cuda/test_flash_attention_reference.py:
//
//   flash_attention_emu <dir>
//
// <dir>/config.txt holds "key value" lines: batch seq_q seq_k heads kv_heads
// head_dim causal window q_offset(key position of query 0; absent: seq_k - seq_q)
// scale dtype(bf16|fp16) alibi(0|1) backward(0|1)
// deterministic(0|1) sms order(0|1|2) lazy(0|1) arch(80|90: the reported
// device) tma_mode(0|1|2) kernel(auto|portable|hopper). Inputs are raw little-endian
// files: q.bin k.bin v.bin (16-bit floats), alibi.bin (fp32), dout.bin. The
// driver runs the real host entry points (flash_attention.cu) on the emulator and
// writes out.bin lse.bin, and with backward dq.bin dk.bin dv.bin. Invalid
// parameters print "ERROR: <message>" and exit 2.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "flash_attention/emu/emu.h"
#include "flash_attention/flash_attention_cuda.h"

namespace {

namespace emu = llmpre::cuda::fa::emu;

// 256-byte aligned storage (the backward workspace needs it), registered with
// the emulator so kernels may touch exactly these bytes.
struct Buf {
  std::vector<unsigned char> raw;
  unsigned char* p = nullptr;
  size_t bytes = 0;
  void alloc(size_t n, const char* name, unsigned char fill) {
    bytes = n;
    raw.assign(n + 512, fill);
    p = raw.data() + (256 - reinterpret_cast<uintptr_t>(raw.data()) % 256);
    if (n) emu::register_buffer(p, n, name);
  }
};

std::map<std::string, std::string> read_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::map<std::string, std::string> cfg;
  std::string k, v;
  while (in >> k >> v) cfg[k] = v;
  return cfg;
}

void read_file(const std::string& path, Buf& b, size_t bytes, const char* name) {
  b.alloc(bytes, name, 0xff);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  in.read(reinterpret_cast<char*>(b.p), std::streamsize(bytes));
  if (size_t(in.gcount()) != bytes) throw std::runtime_error(path + ": expected " + std::to_string(bytes) + " bytes");
}

void write_file(const std::string& path, const Buf& b) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.p), std::streamsize(b.bytes));
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp);
}

int run(const std::string& dir) {
  auto cfg = read_config(dir + "/config.txt");
  auto get = [&](const char* key, const char* def) {
    auto it = cfg.find(key);
    return it == cfg.end() ? std::string(def) : it->second;
  };
  auto geti = [&](const char* key, const char* def) { return std::stoi(get(key, def)); };

  emu::config().sms = geti("sms", "132");
  emu::config().order = geti("order", "0");
  emu::config().lazy_copies = geti("lazy", "1") != 0;
  emu::config().seed = unsigned(geti("seed", "1"));
  emu::config().arch = geti("arch", "80");
  emu::config().tma_mode = geti("tma_mode", "0");

  llmpre::cuda::FlashAttentionBwdParams p;
  p.batch = geti("batch", "1");
  p.seq_q = geti("seq_q", "1");
  p.seq_k = geti("seq_k", "1");
  p.heads = geti("heads", "1");
  p.kv_heads = geti("kv_heads", "1");
  p.head_dim = geti("head_dim", "64");
  p.causal = geti("causal", "1") != 0;
  p.window = geti("window", "-1");
  if (get("q_offset", "default") != "default") p.q_offset = geti("q_offset", "0");
  p.scale = std::stof(get("scale", "0"));
  p.dtype = get("dtype", "bf16") == "fp16" ? llmpre::DType::kFloat16 : llmpre::DType::kBFloat16;
  p.deterministic = geti("deterministic", "0") != 0;
  const std::string kernel = get("kernel", "auto");
  p.kernel = kernel == "hopper"     ? llmpre::cuda::FlashAttentionKernel::kHopper
             : kernel == "portable" ? llmpre::cuda::FlashAttentionKernel::kPortable
                                    : llmpre::cuda::FlashAttentionKernel::kAuto;
  const bool backward = geti("backward", "0") != 0;

  const size_t nq = size_t(p.batch) * p.seq_q * p.heads * p.head_dim;
  const size_t nk = size_t(p.batch) * p.seq_k * p.kv_heads * p.head_dim;
  const size_t nl = size_t(p.batch) * p.heads * p.seq_q;
  Buf q, k, v, alibi, out, lse, dout, dq, dk, dv, ws;
  read_file(dir + "/q.bin", q, nq * 2, "q");
  read_file(dir + "/k.bin", k, nk * 2, "k");
  read_file(dir + "/v.bin", v, nk * 2, "v");
  if (geti("alibi", "0")) {
    read_file(dir + "/alibi.bin", alibi, size_t(p.heads) * 4, "alibi_slopes");
    p.alibi_slopes = reinterpret_cast<const float*>(alibi.p);
  }
  out.alloc(nq * 2, "out", 0xff);  // NaN: an element the kernel forgets shows up
  lse.alloc(nl * 4, "lse", 0xff);
  p.q = q.p;
  p.k = k.p;
  p.v = v.p;
  p.out = out.p;
  p.lse = reinterpret_cast<float*>(lse.p);
  try {
    llmpre::cuda::flash_attention_forward(p, nullptr);
    if (backward) {
      read_file(dir + "/dout.bin", dout, nq * 2, "dout");
      dq.alloc(nq * 2, "dq", 0xff);
      dk.alloc(nk * 2, "dk", 0xff);
      dv.alloc(nk * 2, "dv", 0xff);
      ws.alloc(llmpre::cuda::flash_attention_bwd_workspace_bytes(p), "workspace", 0xff);
      p.dout = dout.p;
      p.dq = dq.p;
      p.dk = dk.p;
      p.dv = dv.p;
      p.workspace = ws.bytes ? ws.p : nullptr;
      llmpre::cuda::flash_attention_backward(p, nullptr);
    }
  } catch (const std::invalid_argument& e) {
    std::printf("ERROR: %s\n", e.what());
    return 2;
  }
  write_file(dir + "/out.bin", out);
  write_file(dir + "/lse.bin", lse);
  if (backward) {
    write_file(dir + "/dq.bin", dq);
    write_file(dir + "/dk.bin", dk);
    write_file(dir + "/dv.bin", dv);
  }
  const char* names[] = {"auto", "portable", "hopper"};
  std::printf("ok launches=%lld warp_ops=%lld workspace=%zu fwd=%s bwd=%s\n", emu::config().launches,
              emu::config().warp_ops, ws.bytes, names[int(llmpre::cuda::flash_attention_selected_kernel(p, false))],
              backward ? names[int(llmpre::cuda::flash_attention_selected_kernel(p, true))] : "-");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: flash_attention_emu <dir with config.txt and inputs>\n");
    return 1;
  }
  try {
    return run(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flash_attention_emu: %s\n", e.what());
    return 1;
  }
}
