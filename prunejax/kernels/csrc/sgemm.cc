// prunejax_sgemm: an XLA FFI handler for XLA:CPU that computes C = op(A) op(B) for rank-2 float32
// buffers with a BLAS library's cblas_sgemm (row-major; op transposes when the attribute says so).
//
// The library is not linked: prunejax/cpu_gemm.py opens one (MKL's libmkl_rt) with ctypes and hands
// its cblas_sgemm to prunejax_set_sgemm before the first call. Build: prunejax cpu-gemm build
#include <climits>
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm with 32-bit integers (the LP64 interface). The enums are CBLAS's values.
using Sgemm = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                       int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
constexpr int64_t kRowAlign = 16;  // rows of C per piece: a multiple of this

Sgemm sgemm = nullptr;

// One product split into pieces of C's rows. MKL runs sequentially (one thread per call): the pieces
// run on XLA's own intra-op threads, so the product never competes with a second thread pool for the
// cores; a piece is claimed by whichever thread is free, the calling thread included.
struct Product {
  const float *a, *b;
  float* c;
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, rows, pieces;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable finished;

  void RunPieces() {
    for (int64_t i; (i = next.fetch_add(1)) < pieces;) {
      const int64_t r0 = i * rows, r = std::min(rows, m - r0);
      // Row r0 of op(A): row r0 of A, or column r0 of A when A is transposed.
      const float* a0 = trans_a ? a + r0 : a + r0 * lda;
      sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, static_cast<int>(r),
            static_cast<int>(n), static_cast<int>(k), 1.0f, a0, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f,
            c + r0 * n, static_cast<int>(n));
      if (done.fetch_add(1) + 1 == pieces) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
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
  auto p = std::make_shared<Product>();
  p->a = a.typed_data(), p->b = b.typed_data(), p->c = c->typed_data();
  p->trans_a = trans_a, p->trans_b = trans_b, p->m = m, p->n = n, p->k = k, p->lda = ad[1], p->ldb = bd[1];
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t want = std::min<int64_t>(threads, (m + kRowAlign - 1) / kRowAlign);
  p->rows = ((m + want - 1) / want + kRowAlign - 1) / kRowAlign * kRowAlign;
  p->pieces = (m + p->rows - 1) / p->rows;
  for (int64_t i = 1; i < p->pieces; ++i) pool.Schedule([p] { p->RunPieces(); });
  p->RunPieces();
  // Wait only for pieces another thread has claimed and is running: never for a queued task.
  std::unique_lock<std::mutex> lock(p->mu);
  p->finished.wait(lock, [&] { return p->done.load() == p->pieces; });
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
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
