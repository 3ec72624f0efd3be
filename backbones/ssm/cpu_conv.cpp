// Depthwise causal conv1d in the token layout, with the SiLU after it fused in: the short convolution in front of
// every Mamba scan, compiled for the CPU beside the selective scan (one extension, built by cpu_kernel.py).
//
//   a[b, t, c] = bias[c] + sum_k taps[k, c] * x[b, t - (K-1) + k, c]      (zeros before the sequence start)
//   y          = a                  (silu = false)
//   y          = a * sigmoid(a)     (silu = true)
//
// reverse = true convolves over the following tokens instead (x[b, t + (K-1) - k], zeros after the end): the
// causal conv of the flipped sequence, flipped back, without the copies, for DiS's backward scan direction.
// x is then read from its last row with a negated time stride; outputs and gradients stay in token order.
//
// In PyTorch ops this is K shifted multiply-adds, a SiLU and, in the backward pass, 2K+3 more passes over
// (batch, L, channels) tensors; here each token is one pass over its channels in SIMD vectors (cpu_vec.h: the
// sigmoid from exp(-|a|), as the scan's gate computes it), and the pre-activation is never stored: the
// backward pass recomputes it (K multiply-adds per element, cheaper than a round trip through memory).
//
// Parallelism: at::parallel_for over tokens in the forward pass and over batch elements in the backward pass
// (each batch element keeps its own partial weight and bias gradients, summed over the batch afterwards), so
// the results are the same at every thread count.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_vec.h"

namespace {

using namespace archbench_cpu;

void check_conv(const at::Tensor& x, const at::Tensor& taps, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "cpu causal conv: x must be (batch, L, channels) with unit stride "
              "along channels");
  TORCH_CHECK(taps.dim() == 2 && taps.size(1) == x.size(2) && taps.is_contiguous() &&
                  taps.scalar_type() == x.scalar_type(),
              "cpu causal conv: taps must be a contiguous (K, channels) tensor of x's dtype");
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(2) && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "cpu causal conv: bias must be a contiguous (channels,) tensor of x's dtype");
  }
}

// The operands of one convolution: sizes, x's strides (unit along channels) and the data pointers.
template <typename T>
struct Conv {
  int64_t L, C, K, sb, sl;
  const T *x, *taps, *bias;
  bool reverse;
  Conv(const at::Tensor& x_, const at::Tensor& taps_, const c10::optional<at::Tensor>& bias_, bool reverse_)
      : L(x_.size(1)), C(x_.size(2)), K(taps_.size(0)), sb(x_.stride(0)), sl(reverse_ ? -x_.stride(1) : x_.stride(1)),
        x(x_.data_ptr<T>() + (reverse_ ? (x_.size(1) - 1) * x_.stride(1) : 0)), taps(taps_.data_ptr<T>()),
        bias(bias_ ? bias_->data_ptr<T>() : nullptr), reverse(reverse_) {}
  int64_t row(int64_t t) const { return reverse ? L - 1 - t : t; }  // where timestep t lives in token order
};

// The pre-activation of token t at channels [c, c + nv): bias + sum_k taps[k] * x[t - (K-1) + k].
template <typename M>
inline typename M::V preactivation(const typename M::T* x, int64_t sl, int64_t t, const typename M::T* taps,
                                   const typename M::T* bias, int64_t K, int64_t C, int64_t c, int nv) {
  using V = typename M::V;
  V acc = bias ? loadv<V>(bias + c, nv) : M::bc(0);
  for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k)
    acc += loadv<V>(taps + k * C + c, nv) * loadv<V>(x + (t - (K - 1) + k) * sl + c, nv);
  return acc;
}

template <typename T>
void forward_tokens(const at::Tensor& x, const at::Tensor& taps, const c10::optional<at::Tensor>& bias, bool silu,
                    bool reverse, at::Tensor& y) {
  using M = typename MathOf<T>::type;
  using V = typename M::V;
  constexpr int W = sizeof(V) / sizeof(T);
  const Conv<T> p(x, taps, bias, reverse);
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, x.size(0) * p.L, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t it = lo; it < hi; ++it) {
      const int64_t b = it / p.L, t = it % p.L;
      for (int64_t c = 0; c < p.C; c += W) {
        const int nv = static_cast<int>(std::min<int64_t>(W, p.C - c));
        V a = preactivation<M>(p.x + b * p.sb, p.sl, t, p.taps, p.bias, p.K, p.C, c, nv);
        if (silu) a = a * M::sigmoid_from(a, M::exp_neg_abs(a));
        storev(yp + (b * p.L + p.row(t)) * p.C + c, a, nv);
      }
    }
  });
}

template <typename T>
void backward_batch(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& taps,
                    const c10::optional<at::Tensor>& bias, bool silu, bool reverse, at::Tensor& gx,
                    at::Tensor& gtaps_part, at::Tensor& gbias_part) {
  using M = typename MathOf<T>::type;
  using V = typename M::V;
  constexpr int W = sizeof(V) / sizeof(T);
  const Conv<T> p(x, taps, bias, reverse);
  const int64_t L = p.L, C = p.C, K = p.K, sl = p.sl;
  const T *tp = p.taps, *bp = p.bias;
  const T* gp = gy.data_ptr<T>();
  at::parallel_for(0, x.size(0), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* xb = p.x + b * p.sb;
      T* gw = gtaps_part.data_ptr<T>() + b * K * C;
      T* gbias = gbias_part.data_ptr<T>() + b * C;
      T* gxb = gx.data_ptr<T>() + b * L * C;
      for (int64_t t = 0; t < L; ++t) {
        for (int64_t c = 0; c < C; c += W) {
          const int nv = static_cast<int>(std::min<int64_t>(W, C - c));
          V ga = loadv<V>(gp + (b * L + p.row(t)) * C + c, nv);
          if (silu) {  // d silu(a) / da = s (1 + a (1 - s)), s = sigmoid(a)
            const V a = preactivation<M>(xb, sl, t, tp, bp, K, C, c, nv);
            const V s = M::sigmoid_from(a, M::exp_neg_abs(a));
            ga = ga * s * (a * (M::bc(1) - s) + M::bc(1));
          }
          storev(gbias + c, loadv<V>(gbias + c, nv) + ga, nv);
          for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
            const int64_t src = t - (K - 1) + k;
            T* gwk = gw + k * C + c;
            T* gxs = gxb + p.row(src) * C + c;
            storev(gwk, loadv<V>(gwk, nv) + loadv<V>(xb + src * sl + c, nv) * ga, nv);
            storev(gxs, loadv<V>(gxs, nv) + loadv<V>(tp + k * C + c, nv) * ga, nv);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& taps, const c10::optional<at::Tensor>& bias,
                        bool silu, bool reverse) {
  check_conv(x, taps, bias);
  auto y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_conv_forward", [&] {
    forward_tokens<scalar_t>(x, taps, bias, silu, reverse, y);
  });
  return y;
}

// Gradients of x, taps (K, channels) and bias from the output's gradient gy (batch, L, channels).
std::vector<at::Tensor> conv_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& taps,
                                      const c10::optional<at::Tensor>& bias, bool silu, bool reverse) {
  check_conv(x, taps, bias);
  TORCH_CHECK(gy.sizes() == x.sizes() && gy.is_contiguous() && gy.scalar_type() == x.scalar_type(),
              "cpu causal conv: the output's gradient must be a contiguous tensor of x's shape and dtype");
  const int64_t batch = x.size(0), C = x.size(2), K = taps.size(0);
  auto gx = at::zeros(x.sizes(), x.options());
  auto gtaps_part = at::zeros({batch, K, C}, x.options());
  auto gbias_part = at::zeros({batch, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cpu_conv_backward", [&] {
    backward_batch<scalar_t>(gy, x, taps, bias, silu, reverse, gx, gtaps_part, gbias_part);
  });
  return {gx, gtaps_part.sum(0), gbias_part.sum(0)};
}
