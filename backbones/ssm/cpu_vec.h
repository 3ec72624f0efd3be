// Vector math shared by the compiled CPU kernels (cpu_scan.cpp, cpu_conv.cpp): GCC vector types as wide as the
// build's SIMD level, exp / log / reciprocal for fp32 lanes (fp64 lanes use the C library, lane by lane), and
// loads and stores of partial vectors.
#pragma once

#include <algorithm>
#include <cmath>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <limits>

namespace archbench_cpu {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

typedef float vf __attribute__((vector_size(kVecBytes)));
typedef int32_t vi __attribute__((vector_size(kVecBytes)));
typedef double vd __attribute__((vector_size(kVecBytes)));

// ---------------------------------------------------------------------------------------------
// Vector math.

inline vf bcf(float s) { return vf{} + s; }
inline vd bcd(double s) { return vd{} + s; }

// 2^(a b) for fp32 lanes: x = k + f, |f| <= 1/2, 2^f by a degree-6 polynomial (relative error 1e-7), the
// product a b fused into the range reduction.  Results below 2^-125 are 0 (no denormals: they would slow
// the multiplies that follow), NaN stays NaN, large x gives inf.
inline vf exp2_mul_f(vf a, vf b) {
  const vf magic = bcf(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
#if defined(__AVX512F__)
  vf t = a * b + magic;
  vf k = t - magic;
  vf f = a * b - k;  // contracted to one fma: the exact product minus k, rounded once
#else
  vf x = a * b;
  const vf lo = bcf(-126.0f), hi = bcf(127.0f);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  vf t = xc + magic;
  vf k = t - magic;
  vf f = xc - k;
#endif
  vf p = bcf(1.5344393614213914e-4f);
  p = p * f + 1.339991926215589e-3f;
  p = p * f + 9.618494659662247e-3f;
  p = p * f + 5.550328642129898e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  // vscalefps multiplies by 2^k without building exponent bits; the "not less than" mask keeps NaN.
  const __mmask16 keep = _mm512_cmp_ps_mask((__m512)k, _mm512_set1_ps(-125.0f), _CMP_NLT_UQ);
  return (vf)_mm512_maskz_scalef_ps(keep, (__m512)p, (__m512)k);
#else
  vi ki = (vi)t - 0x4B400000;
  vf scale = (vf)((ki + 127) << 23);
  vf r = p * scale;
  r = x < lo ? bcf(0.0f) : r;
  r = x > hi ? bcf(std::numeric_limits<float>::infinity()) : r;
  return r;
#endif
}

// exp(x) for x <= 0 (Cephes expf: Cody-Waite reduction, about 1 ulp); below -87.3 gives 0.
inline vf exp_neg_f(vf x) {
  const vf magic = bcf(12582912.0f);
#if defined(__AVX512F__)
  vf xc = x;
#else
  const vf lo = bcf(-87.33f);
  vf xc = x < lo ? lo : x;
#endif
  vf t = xc * 1.44269504088896341f + magic;
  vf k = t - magic;
  vf r = xc - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  vf p = bcf(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vf y = p * (r * r) + r + 1.0f;
#if defined(__AVX512F__)
  const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-87.33f), _CMP_NLT_UQ);
  return (vf)_mm512_maskz_scalef_ps(keep, (__m512)y, (__m512)k);
#else
  vi ki = (vi)t - 0x4B400000;
  vf scale = (vf)((ki + 127) << 23);
  vf out = y * scale;
  return x < lo ? bcf(0.0f) : out;
#endif
}

// log(x) for x in [1, 2] (Cephes logf polynomial, about 1 ulp).
inline vf log_1to2_f(vf x) {
  const vf sqrt2 = bcf(1.41421356237309505f);
  auto big = x > sqrt2;
  vf m = big ? x * 0.5f : x;
  vf e = big ? bcf(1.0f) : bcf(0.0f);
  vf f = m - 1.0f;
  vf z = f * f;
  vf y = bcf(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  vf r = f + y;
  return r + e * 0.693359375f;
}

// 1/x for x in [1, 2]: rcp14 and one Newton step (relative error about 2^-28) where AVX-512 has it; a
// division costs several times more.
inline vf recip_1to2_f(vf x) {
#if defined(__AVX512F__)
  vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r + r * (1.0f - x * r);
#else
  return 1.0f / x;
#endif
}

struct MathF {
  using T = float;
  using V = vf;
  static constexpr float kDecayScale = 1.44269504088896341f;  // A is prescaled by log2(e) ...
  static constexpr float kDecayUnscale = 0.693147180559945309f;  // ... and dLoss/dA_scaled * ln 2 = dLoss/dA
  static V bc(T s) { return bcf(s); }
  static V decay(V dl, V a_scaled) { return exp2_mul_f(dl, a_scaled); }
  // softplus(x) (beta 1, threshold 20, as F.softplus) and its derivative sigmoid(x), without a division, in
  // two stages, e = exp(-|x|) first: the loops over a chunk's timesteps run each stage for all of them before
  // the next, so each loop body is short and many iterations overlap (one long chain of exp -> reciprocal ->
  // log per timestep keeps too few in flight).  softplus(x) = max(x, 0) + log1p(e); log1p(e) = log(u) + c / u
  // with u = fl(1 + e) and c = e - (u - 1) its exact rounding error (|c / u| is below an ulp of 1, so 1/u
  // needs few digits).
  static V exp_neg_abs(V x) { return exp_neg_f(-(x < 0.0f ? -x : x)); }
  static void softplus_from(V x, V e, V& sp, V& sg) {
    V u = e + 1.0f;
    V r = recip_1to2_f(u);
    V c = e - (u - 1.0f);
    V l1p = log_1to2_f(u) + c * r;
    V s = (x > 0.0f ? x : bcf(0.0f)) + l1p;
    V g = (x >= 0.0f ? bcf(1.0f) : e) * r;
    sp = x > 20.0f ? x : s;
    sg = x > 20.0f ? bcf(1.0f) : g;
  }
  static V sigmoid_from(V x, V e) { return (x >= 0.0f ? bcf(1.0f) : e) * recip_1to2_f(e + 1.0f); }
};

struct MathD {
  using T = double;
  using V = vd;
  static constexpr int W = kVecBytes / 8;
  static constexpr double kDecayScale = 1.0;
  static constexpr double kDecayUnscale = 1.0;
  static V bc(T s) { return bcd(s); }
  static V decay(V dl, V a) {
    V x = dl * a, r;
    for (int i = 0; i < W; ++i) r[i] = std::exp(x[i]);
    return r;
  }
  static V exp_neg_abs(V x) {
    V r;
    for (int i = 0; i < W; ++i) r[i] = std::exp(-std::fabs(x[i]));
    return r;
  }
  static void softplus_from(V x, V e, V& sp, V& sg) {
    for (int i = 0; i < W; ++i) {
      const double v = x[i];
      sp[i] = v > 20.0 ? v : std::max(v, 0.0) + std::log1p(e[i]);
      sg[i] = v > 20.0 ? 1.0 : (v >= 0.0 ? 1.0 : e[i]) / (1.0 + e[i]);
    }
  }
  static V sigmoid_from(V x, V e) {
    V r;
    for (int i = 0; i < W; ++i) r[i] = (x[i] >= 0.0 ? 1.0 : e[i]) / (1.0 + e[i]);
    return r;
  }
};

template <typename T> struct MathOf;
template <> struct MathOf<float> { using type = MathF; };
template <> struct MathOf<double> { using type = MathD; };

// Loads and stores of the first nv lanes (nv == W: one unaligned vector access; else zero-padded).
template <typename V, typename T>
inline V loadv(const T* p, int nv) {
  constexpr int W = sizeof(V) / sizeof(T);
  V v;
  if (nv == W) {
    std::memcpy(&v, p, sizeof(V));
  } else {
    v = V{};
    for (int i = 0; i < nv; ++i) v[i] = p[i];
  }
  return v;
}

template <typename V, typename T>
inline void storev(T* p, V v, int nv) {
  constexpr int W = sizeof(V) / sizeof(T);
  if (nv == W) {
    std::memcpy(p, &v, sizeof(V));
  } else {
    for (int i = 0; i < nv; ++i) p[i] = v[i];
  }
}

}  // namespace archbench_cpu
