// The compute-once stage of a Lego convolution on oneDNN, as a TVM FFI global function.
//
// lego_tvm.onednn_conv2d(x, bank, params, out):
//   x      float32 [N, o*b, H, W] (NCHW, compact)
//   bank   float32 [m, b, kh, kw] (oihw), or blocked by B = 8 or 16 as oneDNN's AVX2 / AVX-512
//          kernels want it, [m/B, b/B, kh, kw, B, B] (OIhw8i8o / OIhw16i16o), packed once
//          at compile time so that no call reorders the weights
//   params [o, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, block]
//   out    float32 [N, o, m/block, OH, OW, block]: the o*m Lego feature maps in the layout the
//          TVM gather-sum reads (nChw<block>c of the [N*o, m, OH, OW] maps; block 1 is NCHW)
// The splits are folded into the batch: one convolution of N*o images of b channels with the
// m filters of the bank. Built against oneDNN 2.x (Debian libdnnl-dev) or 3.x.
#include <dnnl.hpp>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

Tag WeightTag(int64_t block) {
  switch (block) {
    case 1: return Tag::oihw;
    case 8: return Tag::OIhw8i8o;
    case 16: return Tag::OIhw16i16o;
    default:
      TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: weight block " << block
                                << " is not one of 1, 8, 16";
  }
  return Tag::oihw;
}

Tag BlockedTag(int64_t block) {
  switch (block) {
    case 1: return Tag::nchw;
    case 4: return Tag::nChw4c;
    case 8: return Tag::nChw8c;
    case 16: return Tag::nChw16c;
    default:
      TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: output block " << block
                                << " is not one of 1, 4, 8, 16";
  }
  return Tag::nchw;
}

// One convolution shape: the primitive and, where its preferred layouts differ from ours,
// the reorders and the scratch memory between them (created once, reused by every call).
struct Conv {
  dnnl::convolution_forward primitive;
  memory::desc user_src, user_weights, user_dst;
  memory src, weights, dst;           // the primitive's own, when they differ from ours
  bool reorder_src, reorder_weights, reorder_dst;
  std::string impl;
};

std::mutex mutex;                      // the scratch memory is shared: one call at a time
std::map<std::vector<int64_t>, std::unique_ptr<Conv>> cache;

std::unique_ptr<Conv> MakeConv(const memory::dims& src_dims, const memory::dims& weight_dims,
                               const memory::dims& dst_dims, const memory::dims& strides,
                               const memory::dims& pad_l, const memory::dims& pad_r,
                               int64_t block, int64_t weight_block) {
  auto f32 = memory::data_type::f32;
  // The weights come in the layout given (chosen at compile time for this CPU's kernels);
  // where no fast kernel takes it, oneDNN picks a slower one, never a wrong one.
  memory::desc src_any(src_dims, f32, Tag::any),
      weights_given(weight_dims, f32, WeightTag(weight_block)), dst_any(dst_dims, f32, Tag::any);
#if DNNL_VERSION_MAJOR >= 3
  dnnl::convolution_forward::primitive_desc pd(
      Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      src_any, weights_given, dst_any, strides, pad_l, pad_r);
#else
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference,
                                       dnnl::algorithm::convolution_direct, src_any,
                                       weights_given, dst_any, strides, pad_l, pad_r);
  dnnl::convolution_forward::primitive_desc pd(desc, Engine());
#endif
  auto conv = std::make_unique<Conv>();
  conv->primitive = dnnl::convolution_forward(pd);
  conv->user_src = memory::desc(src_dims, f32, Tag::nchw);
  conv->user_weights = weights_given;
  conv->user_dst = memory::desc(dst_dims, f32, BlockedTag(block));
  conv->reorder_src = pd.src_desc() != conv->user_src;
  conv->reorder_weights = pd.weights_desc() != conv->user_weights;
  conv->reorder_dst = pd.dst_desc() != conv->user_dst;
  if (conv->reorder_src) conv->src = memory(pd.src_desc(), Engine());
  if (conv->reorder_weights) conv->weights = memory(pd.weights_desc(), Engine());
  if (conv->reorder_dst) conv->dst = memory(pd.dst_desc(), Engine());
  conv->impl = pd.impl_info_str();
  return conv;
}

void CheckTensor(const tvm::ffi::TensorView& t, const char* name, int ndim) {
  if (t.ndim() != ndim || t.dtype().code != kDLFloat || t.dtype().bits != 32 ||
      t.dtype().lanes != 1 || t.device().device_type != kDLCPU || !t.IsContiguous()) {
    TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: " << name
                              << " must be a compact float32 CPU tensor of rank " << ndim;
  }
}

void* Data(const tvm::ffi::TensorView& t) {
  return static_cast<char*>(t.data_ptr()) + t.byte_offset();
}

void Conv2d(tvm::ffi::TensorView x, tvm::ffi::TensorView bank, tvm::ffi::Shape params,
            tvm::ffi::TensorView out) {
  CheckTensor(x, "x", 4);
  CheckTensor(bank, "bank", bank.ndim() == 6 ? 6 : 4);
  CheckTensor(out, "out", 6);
  if (params.size() != 8) {
    TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: params has " << params.size()
                              << " values, expected 8";
  }
  int64_t splits = params[0], block = params[7];
  int64_t weight_block = bank.ndim() == 6 ? bank.size(4) : 1;
  if (bank.ndim() == 6 && bank.size(5) != weight_block) {
    TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: blocked bank must be [m/B, b/B, kh, "
                                 "kw, B, B]";
  }
  int64_t n = x.size(0), c = x.size(1), m = bank.size(0) * weight_block,
          b = bank.size(1) * weight_block;
  if (splits < 1 || c != splits * b || out.size(0) != n || out.size(1) != splits ||
      out.size(2) * out.size(5) != m || out.size(5) != block) {
    TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_conv2d: shapes do not agree (x channels " << c
                              << ", " << splits << " splits of " << b << ", bank " << m
                              << " filters, output block " << block << ")";
  }
  memory::dims src_dims{n * splits, b, x.size(2), x.size(3)};
  memory::dims weight_dims{m, b, bank.size(2), bank.size(3)};
  memory::dims dst_dims{n * splits, m, out.size(3), out.size(4)};
  memory::dims strides{params[1], params[2]}, pad_l{params[3], params[4]},
      pad_r{params[5], params[6]};

  std::lock_guard<std::mutex> lock(mutex);
  std::vector<int64_t> key{src_dims[0], src_dims[1], src_dims[2], src_dims[3], m,
                           bank.size(2), bank.size(3), dst_dims[2], dst_dims[3], weight_block};
  key.insert(key.end(), params.begin(), params.end());
  auto& conv = cache[key];
  try {
    if (!conv) {
      conv = MakeConv(src_dims, weight_dims, dst_dims, strides, pad_l, pad_r, block,
                      weight_block);
    }
    dnnl::stream stream(Engine());
    memory user_src(conv->user_src, Engine(), Data(x));
    memory user_weights(conv->user_weights, Engine(), Data(bank));
    memory user_dst(conv->user_dst, Engine(), Data(out));
    memory src = conv->reorder_src ? conv->src : user_src;
    memory weights = conv->reorder_weights ? conv->weights : user_weights;
    memory dst = conv->reorder_dst ? conv->dst : user_dst;
    if (conv->reorder_src) dnnl::reorder(user_src, src).execute(stream, user_src, src);
    // Reordered on every call if ever needed: a copy cached by address could go stale.
    if (conv->reorder_weights) {
      dnnl::reorder(user_weights, weights).execute(stream, user_weights, weights);
    }
    conv->primitive.execute(stream, {{DNNL_ARG_SRC, src},
                                     {DNNL_ARG_WEIGHTS, weights},
                                     {DNNL_ARG_DST, dst}});
    if (conv->reorder_dst) dnnl::reorder(dst, user_dst).execute(stream, dst, user_dst);
    stream.wait();
  } catch (const dnnl::error& err) {
    conv.reset();
    TVM_FFI_THROW(RuntimeError) << "lego_tvm.onednn_conv2d: oneDNN failed: " << err.what();
  }
}

// The oneDNN implementation chosen for a shape (for the report), e.g. "jit:avx2".
// The oneDNN implementation chosen for a shape (for the report), e.g. "jit:avx2", and
// whether it reorders the weights on every call (" (reorders weights)").
tvm::ffi::String Implementation(tvm::ffi::Shape dims) {
  if (dims.size() != 16) {
    TVM_FFI_THROW(ValueError) << "lego_tvm.onednn_implementation: expected 16 values, got "
                              << dims.size();
  }
  // dims: N*o, b, H, W, m, kh, kw, OH, OW, sh, sw, pt, pl, pb, pr, weight block
  auto conv = MakeConv({dims[0], dims[1], dims[2], dims[3]}, {dims[4], dims[1], dims[5], dims[6]},
                       {dims[0], dims[4], dims[7], dims[8]}, {dims[9], dims[10]},
                       {dims[11], dims[12]}, {dims[13], dims[14]}, 1, dims[15]);
  return conv->impl + (conv->reorder_weights ? " (reorders weights)" : "");
}

tvm::ffi::String Version() {
  const dnnl_version_t* v = dnnl_version();
  std::ostringstream os;
  os << "oneDNN " << v->major << "." << v->minor << "." << v->patch;
  return os.str();
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("lego_tvm.onednn_conv2d", Conv2d)
      .def("lego_tvm.onednn_implementation", Implementation)
      .def("lego_tvm.onednn_version", Version);
}
