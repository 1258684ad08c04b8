// prunejax_sgemm: an XLA FFI handler for XLA:CPU that computes C = op(A) op(B) for rank-2 float32
// buffers with a BLAS library's cblas_sgemm (row-major; op transposes when the attribute says so).
//
// The library is not linked: prunejax/cpu_gemm.py opens one (MKL's libmkl_rt) with ctypes and hands
// its cblas_sgemm to prunejax_set_sgemm before the first call. Build: python -m prunejax.cpu_gemm build
#include <climits>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm with 32-bit integers (the LP64 interface). The enums are CBLAS's values.
using Sgemm = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                       int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm sgemm = nullptr;

ffi::Error Matmul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c, bool trans_a,
                  bool trans_b) {
  if (sgemm == nullptr) return ffi::Error::Internal("prunejax_sgemm: no BLAS library was loaded");
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2)
    return ffi::Error::InvalidArgument("prunejax_sgemm: operands and result must be rank 2");
  const int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  const int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n)
    return ffi::Error::InvalidArgument("prunejax_sgemm: operand and result shapes do not match");
  for (int64_t d : {ad[0], ad[1], bd[0], bd[1]})
    if (d > INT_MAX) return ffi::Error::InvalidArgument("prunejax_sgemm: a dimension exceeds 2^31 - 1");
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(c->typed_data(), 0, sizeof(float) * m * n);
    return ffi::Error::Success();
  }
  sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, static_cast<int>(m),
        static_cast<int>(n), static_cast<int>(k), 1.0f, a.typed_data(), static_cast<int>(ad[1]), b.typed_data(),
        static_cast<int>(bd[1]), 0.0f, c->typed_data(), static_cast<int>(n));
  return ffi::Error::Success();
}

}  // namespace

#ifndef PRUNEJAX_SGEMM_SOURCE_HASH
#define PRUNEJAX_SGEMM_SOURCE_HASH "unknown"
#endif

// The hash of this file when it was built: cpu_gemm.py refuses a library built from another version.
extern "C" const char* prunejax_sgemm_source_hash() { return PRUNEJAX_SGEMM_SOURCE_HASH; }

extern "C" void prunejax_set_sgemm(void* fn) { sgemm = reinterpret_cast<Sgemm>(fn); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(PrunejaxSgemm, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
