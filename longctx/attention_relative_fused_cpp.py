"""The C++ source of the fused CPU kernel of Transformer-XL's relative attention, as a string.

It lives in a Python module so that a saved model's code carries it: transformers copies the
Python files a model imports into a trust_remote_code checkpoint, and
`attention_relative_fused` compiles this string (`torch.utils.cpp_extension.load_inline`) wherever
the model runs, giving the same numbers as here.
"""

SOURCE = r"""
// Transformer-XL's relative attention fused on CPU, forward and backward, flash-style: the queries
// of one (batch, head) are cut into tiles of `query_tile` rows and the keys each tile sees into
// tiles of `key_tile`; every key tile's scores, probabilities and their gradients live in buffers
// of query_tile x key_tile that stay in the core's cache, and nothing of size (q_len x k_len) is
// ever written. Python side and semantics: longctx/attention_relative_fused.py.
//
// score(i, j) = ((q_i + u) . k_j + (q_i + v) . r[dist]) * scale, dist = memory + i - j >= 0,
// r row c holding distance k_len - 1 - c. For a tile of queries and a span of a few key tiles,
// the position scores against all the distances between them are one matmul of the tile's q + v
// against the contiguous r rows of those distances (`Span`): a "wide" matrix in which query ii
// meets key j at column (rows - 1 - ii) + j - key_start, a row-dependent shift that is only
// pointer arithmetic. The gradient of the scores is written back through the same shift into a
// zeroed wide matrix, which is at once the gradient of the content scores (a strided view) and of
// the position scores, whose two matmuls with r and q + v give the gradients of q + v and r.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// The Fortran BLAS that torch links (MKL, OpenBLAS) and exports.
extern "C" {
void sgemm_(const char* trans_a, const char* trans_b, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* trans_a, const char* trans_b, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const float* alpha, const float* a, const int* lda, const float* b,
                      const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const double* alpha, const double* a, const int* lda, const double* b,
                      const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C (m x n) = alpha * op(A) op(B) + beta * C, as the column-major C^T = op(B)^T op(A)^T.
// BLAS wants every leading dimension >= the rows of its column-major matrix, even where a
// dimension of 1 leaves it unused: those are raised to the minimum.
template <typename T>
void gemm_rows(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  // column-major sizes
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int ld_c = std::max<int>(static_cast<int>(ldc), std::max(M, 1));
  const int ld_first =
      std::max<int>(static_cast<int>(ldb), std::max(trans_b ? K : M, 1));  // B^T: M x K
  const int ld_second =
      std::max<int>(static_cast<int>(lda), std::max(trans_a ? N : K, 1));  // A^T: K x N
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  blas_gemm(&ta, &tb, &M, &N, &K, &alpha, b, &ld_first, a, &ld_second, &beta, c, &ld_c);
}

struct Shape {
  int64_t batch, heads, q_len, k_len, dim, memory, window;  // window 0: none
  int64_t query_tile, key_tile, span_keys;  // span_keys: a multiple of key_tile
  double scale;
  const bool* key_padding;  // (batch, k_len), true for a real key; nullptr: none
};

// The keys query (absolute position) `query` may see lie in [first_key, query]; padded ones aside.
inline int64_t first_key(const Shape& s, int64_t query) {
  return s.window > 0 ? std::max<int64_t>(0, query - s.window + 1) : 0;
}

// A tile of `rows` queries from i0 and a span of the keys they may see, [key_start, key_end) (at
// most span_keys of them: so that the span's matrices below stay in a core's cache). Its position
// scores are one "wide" (rows x width) matrix: column c against distance d_max - c, so query ii
// meets key j at column (rows - 1 - ii) + (j - key_start). Columns past `r_rows` would be negative
// distances (future keys, always hidden) and are never computed.
struct Span {
  int64_t i0, rows, key_start, key_end, width, r_first, r_rows;

  Span(const Shape& s, int64_t first_query, int64_t query_count, int64_t start, int64_t end)
      : i0(first_query), rows(query_count), key_start(start), key_end(end) {
    width = key_end - key_start + rows - 1;
    const int64_t d_max = s.memory + i0 + rows - 1 - key_start;
    r_first = s.k_len - 1 - d_max;  // r row of distance d_max
    r_rows = std::min(width, s.k_len - r_first);
  }
  // offset in the wide matrix of (query row ii, key j)
  int64_t column(int64_t ii, int64_t j) const { return (rows - 1 - ii) + (j - key_start); }
};

// Calls visit(span) for each span of the keys that the tile of queries from i0 may see.
template <typename Visit>
void for_each_span(const Shape& s, int64_t i0, Visit visit) {
  const int64_t rows = std::min(s.query_tile, s.q_len - i0), key_end = s.memory + i0 + rows;
  for (int64_t start = first_key(s, s.memory + i0); start < key_end; start += s.span_keys) {
    visit(Span(s, i0, rows, start, std::min(start + s.span_keys, key_end)));
  }
}

// The span's scaled position scores (q + v) . r[distance] * scale into `wide` (rows x width).
template <typename T>
void position_scores(const Shape& s, const Span& t, const T* qp, const T* r, T* wide) {
  gemm_rows<T>(false, true, t.rows, t.r_rows, s.dim, static_cast<T>(s.scale), qp + t.i0 * s.dim,
               s.dim, r + t.r_first * s.dim, s.dim, T(0), wide, t.width);
}

// row[i] += shifted[i] over n values; returns their maximum (-inf for none).
template <typename T>
T add_and_max(T* row, const T* shifted, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  Vec running(-std::numeric_limits<T>::infinity());
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec x = Vec::loadu(row + i) + Vec::loadu(shifted + i);
    x.store(row + i);
    running = at::vec::maximum(running, x);
  }
  T maximum =
      at::vec::vec_reduce_all<T>([](Vec x, Vec y) { return at::vec::maximum(x, y); }, running);
  for (; i < n; ++i) {
    row[i] += shifted[i];
    maximum = std::max(maximum, row[i]);
  }
  return maximum;
}

// Scaled scores of the tile's queries against keys [j0, j0 + cols), -inf where hidden, into
// `scores` (rows x cols): content scores by one matmul plus the shifted position scores. The
// maximum of each row goes to `row_max` (-inf where all are hidden).
template <typename T>
void key_tile_scores(const Shape& s, const Span& t, int64_t b, const T* qc, const T* k,
                     const T* wide, int64_t j0, int64_t cols, T* scores, T* row_max) {
  gemm_rows<T>(false, true, t.rows, cols, s.dim, static_cast<T>(s.scale), qc + t.i0 * s.dim, s.dim,
               k + j0 * s.dim, s.dim, T(0), scores, cols);
  const T minus_inf = -std::numeric_limits<T>::infinity();
  const bool* padding = s.key_padding ? s.key_padding + b * s.k_len + j0 : nullptr;
  for (int64_t ii = 0; ii < t.rows; ++ii) {
    const int64_t query = s.memory + t.i0 + ii;
    const int64_t lo = std::clamp<int64_t>(first_key(s, query) - j0, 0, cols);
    const int64_t hi = std::clamp<int64_t>(query - j0 + 1, lo, cols);
    T* row = scores + ii * cols;
    std::fill(row, row + lo, minus_inf);
    row_max[ii] = add_and_max<T>(row + lo, wide + ii * t.width + t.column(ii, j0) + lo, hi - lo);
    std::fill(row + hi, row + cols, minus_inf);
    if (padding) {
      T maximum = minus_inf;
      for (int64_t jj = lo; jj < hi; ++jj) {
        if (!padding[jj]) row[jj] = minus_inf;
        maximum = std::max(maximum, row[jj]);
      }
      row_max[ii] = maximum;
    }
  }
}

// exp(x - shift) in place over n values (-inf -> 0), returning their sum.
template <typename T>
T exp_shifted_and_sum(T* x, int64_t n, T shift) {
  using Vec = at::vec::Vectorized<T>;
  Vec running(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec e = (Vec::loadu(x + i) - Vec(shift)).exp();
    e.store(x + i);
    running = running + e;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec a, Vec b) { return a + b; }, running);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

template <typename T>
void scale_row(T* x, int64_t n, T factor) {
  at::vec::map<T>([factor](auto v) { return v * at::vec::Vectorized<T>(factor); }, x, x, n);
}

// Output rows and log-sum-exp of one query tile: an online softmax over its key tiles.
template <typename T>
void forward_tile(const Shape& s, int64_t bh, int64_t tile, const T* qc_all, const T* qp_all,
                  const T* k_all, const T* v_all, const T* r_all, T* out_all, T* lse_all, T* scores,
                  T* wide) {
  const int64_t D = s.dim, b = bh / s.heads, h = bh % s.heads;
  const int64_t i0 = tile * s.query_tile, rows = std::min(s.query_tile, s.q_len - i0);
  const T *qc = qc_all + bh * s.q_len * D, *qp = qp_all + bh * s.q_len * D;
  const T *k = k_all + bh * s.k_len * D, *v = v_all + bh * s.k_len * D,
          *r = r_all + h * s.k_len * D;
  T* out = out_all + (bh * s.q_len + i0) * D;
  T* lse = lse_all + bh * s.q_len + i0;
  const T minus_inf = -std::numeric_limits<T>::infinity();
  std::vector<T> row_max(rows, minus_inf), row_sum(rows, T(0)), tile_max(rows);
  std::fill(out, out + rows * D, T(0));
  for_each_span(s, i0, [&](const Span& t) {
    position_scores<T>(s, t, qp, r, wide);
    for (int64_t j0 = t.key_start; j0 < t.key_end; j0 += s.key_tile) {
      const int64_t cols = std::min(s.key_tile, t.key_end - j0);
      key_tile_scores<T>(s, t, b, qc, k, wide, j0, cols, scores, tile_max.data());
      for (int64_t ii = 0; ii < rows; ++ii) {
        T* row = scores + ii * cols;
        const T new_max = std::max(row_max[ii], tile_max[ii]);
        if (new_max == minus_inf) {  // nothing visible yet: contributes nothing
          std::fill(row, row + cols, T(0));
          continue;
        }
        const T rescale = std::exp(row_max[ii] - new_max);  // 0 when the row had nothing
        row_sum[ii] = row_sum[ii] * rescale + exp_shifted_and_sum<T>(row, cols, new_max);
        if (rescale != T(1)) scale_row<T>(out + ii * D, D, rescale);
        row_max[ii] = new_max;
      }
      gemm_rows<T>(false, false, rows, D, cols, T(1), scores, cols, v + j0 * D, D, T(1), out, D);
    }
  });
  for (int64_t ii = 0; ii < rows; ++ii) {
    if (row_sum[ii] == T(0)) {  // sees no key: zeros out, and lse +inf makes its probabilities 0
      std::fill(out + ii * D, out + (ii + 1) * D, T(0));
      lse[ii] = std::numeric_limits<T>::infinity();
      continue;
    }
    scale_row<T>(out + ii * D, D, T(1) / row_sum[ii]);
    lse[ii] = row_max[ii] + std::log(row_sum[ii]);
  }
}

// Gradients of one (batch, head): per query tile, per key tile, the probabilities recomputed
// from the log-sum-exp, then dV, dP, and dS = scale * P * (dP - delta). dS is written into a
// zeroed wide matrix at the position scores' columns, where it is at once the gradient of the
// content scores (as a rows x cols view: offset, leading dimension width - 1) and, after the
// span's last key tile, of the position scores (two matmuls for q + v and r).
template <typename T>
void backward_head(const Shape& s, int64_t bh, const T* qc_all, const T* qp_all, const T* k_all,
                   const T* v_all, const T* r_all, const T* grad_out_all, const T* lse_all,
                   const T* delta_all, T* grad_qc_all, T* grad_qp_all, T* grad_k_all, T* grad_v_all,
                   T* grad_r_all) {
  const int64_t D = s.dim, b = bh / s.heads, h = bh % s.heads;
  const int64_t q_off = bh * s.q_len * D, k_off = bh * s.k_len * D;
  const T *qc = qc_all + q_off, *qp = qp_all + q_off, *grad_out = grad_out_all + q_off;
  const T *k = k_all + k_off, *v = v_all + k_off, *r = r_all + h * s.k_len * D;
  const T *lse = lse_all + bh * s.q_len, *delta = delta_all + bh * s.q_len;
  T *grad_qc = grad_qc_all + q_off, *grad_qp = grad_qp_all + q_off;
  T *grad_k = grad_k_all + k_off, *grad_v = grad_v_all + k_off,
    *grad_r = grad_r_all + bh * s.k_len * D;
  const int64_t kt = s.key_tile, max_width = s.span_keys + s.query_tile - 1;
  std::vector<T> work(2 * s.query_tile * kt + 2 * s.query_tile * max_width);
  T *probs = work.data(), *grad_probs = probs + s.query_tile * kt,
    *wide = grad_probs + s.query_tile * kt;
  T* grad_wide = wide + s.query_tile * max_width;
  std::vector<T> unused_max(s.query_tile);
  const T scale = static_cast<T>(s.scale);
  for (int64_t i0 = 0; i0 < s.q_len; i0 += s.query_tile) {
    const T* grad_out_rows = grad_out + i0 * D;
    for_each_span(s, i0, [&](const Span& t) {
      position_scores<T>(s, t, qp, r, wide);
      std::fill(grad_wide, grad_wide + t.rows * t.width, T(0));
      for (int64_t j0 = t.key_start; j0 < t.key_end; j0 += kt) {
        const int64_t cols = std::min(kt, t.key_end - j0);
        key_tile_scores<T>(s, t, b, qc, k, wide, j0, cols, probs, unused_max.data());
        for (int64_t ii = 0; ii < t.rows; ++ii) {
          exp_shifted_and_sum<T>(probs + ii * cols, cols, lse[i0 + ii]);
        }
        gemm_rows<T>(true, false, cols, D, t.rows, T(1), probs, cols, grad_out_rows, D, T(1),
                     grad_v + j0 * D, D);
        gemm_rows<T>(false, true, t.rows, cols, D, T(1), grad_out_rows, D, v + j0 * D, D, T(0),
                     grad_probs, cols);
        for (int64_t ii = 0; ii < t.rows; ++ii) {
          const T d = delta[i0 + ii];
          at::vec::map2<T>(
              [d, scale](auto p, auto dp) {
                return p * (dp - at::vec::Vectorized<T>(d)) * at::vec::Vectorized<T>(scale);
              },
              grad_wide + ii * t.width + t.column(ii, j0), probs + ii * cols,
              grad_probs + ii * cols, cols);
        }
        // (row 0, key j0); row ii is width - 1 further
        const T* grad_scores = grad_wide + t.column(0, j0);
        gemm_rows<T>(false, false, t.rows, D, cols, T(1), grad_scores, t.width - 1, k + j0 * D, D,
                     T(1), grad_qc + i0 * D, D);
        gemm_rows<T>(true, false, cols, D, t.rows, T(1), grad_scores, t.width - 1, qc + i0 * D, D,
                     T(1), grad_k + j0 * D, D);
      }
      gemm_rows<T>(false, false, t.rows, D, t.r_rows, T(1), grad_wide, t.width, r + t.r_first * D,
                   D, T(1), grad_qp + i0 * D, D);
      gemm_rows<T>(true, false, t.r_rows, D, t.rows, T(1), grad_wide, t.width, qp + i0 * D, D, T(1),
                   grad_r + t.r_first * D, D);
    });
  }
}

// The shapes the kernels index by: a wrong one would read or write out of bounds.
Shape make_shape(const torch::Tensor& qc, const torch::Tensor& qp, const torch::Tensor& k,
                 const torch::Tensor& v, const torch::Tensor& r, int64_t memory, int64_t window,
                 const c10::optional<torch::Tensor>& key_padding, int64_t query_tile,
                 int64_t key_tile, int64_t span_tiles) {
  TORCH_CHECK(qc.dim() == 4 && qp.sizes() == qc.sizes(),
              "q_content and q_position: (batch, heads, q_len, dim)");
  const int64_t batch = qc.size(0), heads = qc.size(1), q_len = qc.size(2), dim = qc.size(3);
  const int64_t k_len = memory + q_len;
  TORCH_CHECK(memory >= 0 && window >= 0 && query_tile >= 1 && key_tile >= 1 && span_tiles >= 1,
              "memory, window >= 0; tiles >= 1");
  TORCH_CHECK(k.sizes() == v.sizes() && k.dim() == 4 && k.size(0) == batch && k.size(1) == heads &&
                  k.size(2) == k_len && k.size(3) == dim,
              "k and v: (batch, heads, memory + q_len, dim)");
  TORCH_CHECK(r.dim() == 3 && r.size(0) == heads && r.size(1) == k_len && r.size(2) == dim,
              "r: (heads, memory + q_len, dim)");
  const bool* padding = nullptr;
  if (key_padding.has_value()) {
    TORCH_CHECK(key_padding->scalar_type() == torch::kBool && key_padding->is_contiguous() &&
                    key_padding->dim() == 2 && key_padding->size(0) == batch &&
                    key_padding->size(1) == k_len,
                "key_padding: contiguous bool (batch, memory + q_len)");
    padding = key_padding->data_ptr<bool>();
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  return Shape{batch, heads, q_len, k_len, dim, memory, window, query_tile, key_tile,
               key_tile * span_tiles, scale, padding};
}

void check_inputs(const std::vector<torch::Tensor>& tensors) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(),
                "relative_attention_cpu: inputs must be contiguous CPU tensors");
    TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(),
                "relative_attention_cpu: inputs must share a dtype");
  }
}

}  // namespace

std::vector<torch::Tensor> relative_attention_forward(
    torch::Tensor qc, torch::Tensor qp, torch::Tensor k, torch::Tensor v, torch::Tensor r,
    int64_t memory, int64_t window, c10::optional<torch::Tensor> key_padding, int64_t query_tile,
    int64_t key_tile, int64_t span_tiles) {
  check_inputs({qc, qp, k, v, r});
  const Shape s =
      make_shape(qc, qp, k, v, r, memory, window, key_padding, query_tile, key_tile, span_tiles);
  auto out = torch::empty_like(qc);
  auto lse = torch::empty({s.batch, s.heads, s.q_len}, qc.options());
  const int64_t tiles = (s.q_len + query_tile - 1) / query_tile;
  AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "relative_attention_forward", [&] {
    at::parallel_for(0, s.batch * s.heads * tiles, 1, [&](int64_t begin, int64_t end) {
      // one allocation per thread: the scores of a key tile and the wide matrix of a span
      std::vector<scalar_t> work(s.query_tile * s.key_tile +
                                 s.query_tile * (s.span_keys + s.query_tile - 1));
      scalar_t *scores = work.data(), *wide = scores + s.query_tile * s.key_tile;
      for (int64_t task = begin; task < end; ++task) {
        forward_tile<scalar_t>(s, task / tiles, task % tiles, qc.data_ptr<scalar_t>(),
                               qp.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                               v.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                               out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), scores, wide);
      }
    });
  });
  return {out, lse};
}

// Returns the gradients of qc, qp, k, v and r; r's summed over the batch.
std::vector<torch::Tensor> relative_attention_backward(
    torch::Tensor grad_out, torch::Tensor qc, torch::Tensor qp, torch::Tensor k, torch::Tensor v,
    torch::Tensor r, torch::Tensor out, torch::Tensor lse, int64_t memory, int64_t window,
    c10::optional<torch::Tensor> key_padding, int64_t query_tile, int64_t key_tile,
    int64_t span_tiles) {
  check_inputs({grad_out, qc, qp, k, v, r, out, lse});
  const Shape s =
      make_shape(qc, qp, k, v, r, memory, window, key_padding, query_tile, key_tile, span_tiles);
  TORCH_CHECK(grad_out.sizes() == qc.sizes() && out.sizes() == qc.sizes(),
              "grad_out and out: q's shape");
  TORCH_CHECK(
      lse.dim() == 3 && lse.size(0) == s.batch && lse.size(1) == s.heads && lse.size(2) == s.q_len,
      "lse: (batch, heads, q_len)");
  auto delta = (grad_out * out).sum(-1).contiguous();  // rowsum(dO * O) = sum_j P_ij dP_ij
  auto grad_qc = torch::zeros_like(qc), grad_qp = torch::zeros_like(qp);
  auto grad_k = torch::zeros_like(k), grad_v = torch::zeros_like(v);
  // one per batch row, summed below
  auto grad_r = torch::zeros({s.batch, s.heads, s.k_len, s.dim}, r.options());
  AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "relative_attention_backward", [&] {
    at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        backward_head<scalar_t>(
            s, bh, qc.data_ptr<scalar_t>(), qp.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
            v.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
            lse.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), grad_qc.data_ptr<scalar_t>(),
            grad_qp.data_ptr<scalar_t>(), grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>(),
            grad_r.data_ptr<scalar_t>());
      }
    });
  });
  return {grad_qc, grad_qp, grad_k, grad_v, grad_r.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the GIL is released: the kernels touch no Python object, and other Python threads may run
  m.def("forward", &relative_attention_forward,
        "Transformer-XL relative attention, fused CPU forward",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("backward", &relative_attention_backward,
        "Transformer-XL relative attention, fused CPU backward",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
"""
