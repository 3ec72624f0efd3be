// The Mamba-1 selective scan on the CPU: forward and backward, compiled on first use by
// backbones/ssm/cpu_kernel.py (torch.utils.cpp_extension.load).
//
//   delta <- softplus(delta + delta_bias)              (bias and softplus optional)
//   h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
//   y_t    = C_t . h_t + D * u_t                       (D optional)
//   out_t  = y_t * silu(z_t)                           (z optional)
//
// Layout.  Token layout, as the mixers produce it: u, delta, z are (batch, L, d_inner) with unit
// stride along d_inner (any batch/time strides: transposed views of projections pass without a
// copy); B, C are (batch, L, groups, N) with arbitrary strides (they are read one scalar at a time);
// A is (d_inner, N).  Channel d reads group d / (d_inner / groups).
//
// Low-rank step.  With delta_proj P (R, d_inner), delta is Mamba's (batch, L, R) input of dt_proj (any strides,
// read one scalar at a time like B) and the kernel forms each step itself, bias + sum_r P[r, d] delta[b, t, r]:
// the (batch, L, d_inner) step tensor, its gradient and the projection's three small matmuls never exist.  The
// backward pass returns the gradients of that (batch, L, R) input (a reduction over channels, summed like dB)
// and of P.
//
// Direction.  reverse = true scans from the last token to the first (DiS's backward direction) on the same
// tensors, outputs and gradients in token order: what flipping every input along L, scanning and flipping the
// outputs back computes, bit for bit, without the six copies of (batch, L, d_inner) tensors those flips cost.
//
// Vectorisation is over channels: one SIMD vector holds W neighbouring channels of one group
// (W = 16 fp32 lanes with AVX-512), so u/delta/z/out are plain contiguous vector loads and stores,
// each of the N state elements is one vector register (N = 16 is specialised: the whole state of a
// block lives in 16 registers), B_t[n] and C_t[n] are scalar broadcasts, and the output contraction
// y = sum_n C_n h_n is vertical adds: no horizontal reduction in the forward pass.  Decays are only
// ever multiplied, never divided: exp(delta * A) underflows to 0 harmlessly.
//
// Backward storage: checkpoints every K timesteps (K <= 24 by default, chunks of a sequence balanced: L=66
// is three chunks of 22; cpu_kernel.py chooses).  The forward pass writes the state before every chunk but
// the first (which starts from zeros) to a (batch, channel blocks, chunks - 1, N, W) tensor, each block's
// checkpoints contiguous: 1/K of the full states (4% at K=24; none at all for L <= K).  The backward pass
// walks the chunks in reverse; for each channel block it recomputes the chunk's decays dA_t and decayed
// previous states dA_t h_{t-1} from the checkpoint into a per-thread buffer (2 K N W values: 48 KiB at
// K=24, N=16, W=16 fp32, in L1/L2 with the dB/dC buffers below), accumulating dC_t and y_t (which need
// h_t) on the way, and then runs the adjoint recurrence g_{t-1} = dA_t g_t + C_{t-1} gy_{t-1} back through
// it.  So every exp is computed twice in all (forward, recomputation), never three times.  The
// alternative, all L states of a row kept (L N values = 64 KiB per channel at L=1025), is 1 MiB per
// 16-channel block plus the decays: it would spill L2 and stream through memory, where the chunk buffer
// stays in cache, for a recomputation that costs about one forward pass (larger chunks were measurably
// slower: 61 steps 60% slower than 24 at L=1025).
//
// Per timestep, the softplus of delta, the gate silu(z) and the like run in loops of their own over a chunk
// (two stages: exp(-|x|) first), not inside the recurrence loop: their long exp/log/reciprocal dependency
// chains are independent across timesteps, and the recurrence's state already holds the registers.  (Fused
// into the recurrence loop they nearly doubled the forward pass's time; divisions are replaced by rcp14 + a Newton
// step.)
//
// The gradients of B and C are reductions over the channels of a group (dB_t[n] = sum_d g_t[d,n]
// du_t[d], dC_t[n] = sum_d gy_t[d] h_t[d,n]).  A thread owns one (batch, group, slab of channel
// blocks) item and processes, per chunk, all its blocks: their per-lane products accumulate
// vertically in a (K, N, W) buffer, reduced across lanes once per chunk (a shuffle butterfly), so the
// horizontal sums cost 1/(blocks per slab) of a step.  Each block's adjoint state waits between chunks in
// a buffer (N vectors per block).
//
// Parallelism: at::parallel_for (torch's intra-op threads) over (batch x channel blocks) in the
// forward pass and over (batch x group x slab) in the backward pass; slabs split a group's blocks
// only when batch x groups is smaller than the number of threads (their partial dB/dC are summed
// afterwards).  dA, dD and d(delta_bias) are summed per batch element, then over the batch.
//
// Precision: fp32 inputs compute in fp32 with vectorised exp/log (about 1 ulp; the decay uses
// exp2 of delta * (A log2 e); decays below 2^-125 are 0); fp64 inputs compute in fp64 with the C library's
// exp/log1p, lane by lane (for tests and gradcheck, not for speed).
//
// Rows of u, delta, z, the output and the gradients are one 64-byte line per timestep, d_inner * 4 bytes
// apart: a new 4 KiB page every step or two, which the hardware prefetchers do not cross, so the loops
// prefetch them in software (kPrefetch steps ahead in the forward pass; in the backward pass the
// recomputation of one (block, chunk) requests the rows of the next one).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "cpu_vec.h"

namespace {

using namespace archbench_cpu;

// Software prefetch of the per-timestep rows (see the header comment): without it every step of a block waits
// on a cache miss (the forward pass ran 2.5x slower at L=1025).
constexpr int64_t kPrefetch = 8;

template <typename T>
inline void prefetch_row(const T* p) {
  if (p) __builtin_prefetch(p, 0, 3);
}

template <typename T>
inline void prefetch_for_write(T* p) {
  __builtin_prefetch(p, 1, 3);
}

// Lane sums of W vectors at once: v[0..W) -> one vector whose lane k is the sum of v[k]'s lanes.  A butterfly
// of two-source shuffles and adds, log2(W) levels, about 3 operations per sum instead of a serial chain of W
// adds each.  Level with half-width s: each input holds W / (2 s) groups of 2 s partial sums; a pair (x, y)
// becomes one vector of W / s groups of s, x's groups first.  The shuffle masks are built once per call site.
template <typename V, typename T>
struct Butterfly {
  static constexpr int W = sizeof(V) / sizeof(T);
  using I = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  typedef I Mask __attribute__((vector_size(sizeof(V))));
  static constexpr int kLevels = W == 16 ? 4 : W == 8 ? 3 : W == 4 ? 2 : W == 2 ? 1 : 0;
  Mask lo[kLevels > 0 ? kLevels : 1], hi[kLevels > 0 ? kLevels : 1];

  Butterfly() {
    int level = 0;
    for (int s = W / 2; s >= 1; s /= 2, ++level) {
      const int groups = W / (2 * s);
      for (int o = 0; o < W; ++o) {
        const int gi = o / s, within = o % s;
        const int src = gi < groups ? gi * 2 * s + within : W + (gi - groups) * 2 * s + within;
        lo[level][o] = src;
        hi[level][o] = src + s;
      }
    }
  }

  V sum(V* v) const {  // v is overwritten
    int count = W;
#pragma GCC unroll 4
    for (int level = 0; level < kLevels; ++level, count /= 2) {
      const Mask l = lo[level], h = hi[level];
#pragma GCC unroll 8
      for (int k = 0; k < count / 2; ++k)
        v[k] = __builtin_shuffle(v[2 * k], v[2 * k + 1], l) + __builtin_shuffle(v[2 * k], v[2 * k + 1], h);
    }
    return v[0];
  }
};

// Per-thread scratch memory, kept between calls (torch's intra-op threads persist): the buffers of a work
// item are up to a few hundred KiB, which a std::vector per item would zero (or mmap and page-fault) every
// time.  Grows, never shrinks; not zeroed.
template <typename V>
V* scratch(size_t count) {
  thread_local std::vector<V> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// ---------------------------------------------------------------------------------------------
// Problem description shared by both passes.

template <typename T>
struct Problem {
  int64_t batch, L, d, N, G, dg, K, nchunks;
  bool softplus;
  // reverse: scan from the last token to the first.  The inputs' pointers then start at row L-1 with negated
  // time strides, so "timestep t" reads token L-1-t; the outputs (contiguous) are written at row(t).
  bool reverse;
  int64_t row(int64_t t) const { return reverse ? L - 1 - t : t; }
  const T *u, *delta, *z;  // (batch, L, d), unit stride along d
  int64_t u_sb, u_sl, dl_sb, dl_sl, z_sb, z_sl;
  const T *B, *C;  // (batch, L, G, N), any strides
  int64_t B_sb, B_sl, B_sg, B_sn, C_sb, C_sl, C_sg, C_sn;
  const T* A2t;   // (N, d) contiguous: A^T, times kDecayScale
  const T *D, *bias;  // (d,) contiguous or null
  const T* P;         // (R, d) contiguous: the low-rank step's projection (see the header), or null
  int64_t R, dl_sr;   // its rank and delta's stride along it
  int64_t blocks_per_group() const { return (dg + W() - 1) / W(); }
  // Checkpoints: (batch, groups * blocks_per_group, nchunks - 1, N, W), each block's states contiguous: the
  // state before chunk c >= 1 (chunk 0 starts from zeros).
  int64_t checkpoint_offset(int64_t b, int64_t g, int64_t j, int64_t c) const {
    return (((b * G + g) * blocks_per_group() + j) * (nchunks - 1) + c - 1) * N * W();
  }
  static constexpr int W() { return kVecBytes / sizeof(T); }
};

// The step of timestep t before bias and softplus, channels [d0, d0 + nv): a row of delta, or with a low-rank
// step its R-term sum.  ``dp`` is batch element b's delta (plus d0 when delta is full).
template <typename V, typename T>
inline V raw_step(const Problem<T>& p, const T* dp, int64_t t, int64_t d0, int nv) {
  if (!p.P) return loadv<V>(dp + t * p.dl_sl, nv);
  const T* row = dp + t * p.dl_sl;
  V x{};
  for (int64_t r = 0; r < p.R; ++r) x += loadv<V>(p.P + r * p.d + d0, nv) * row[r * p.dl_sr];
  return x;
}

// ---------------------------------------------------------------------------------------------
// Forward: one (batch element, channel block) per call.
//
// Chunk by chunk (the checkpoint interval): the per-timestep prologue (softplus, delta * u) for the whole chunk,
// then the recurrence, then the epilogue (D skip, gate silu(z), store), each in loops of its own (see the
// header comment).

template <typename T, int NT>
void forward_block(const Problem<T>& p, int64_t b, int64_t g, int64_t j, T* out, T* last, T* cp) {
  using M = typename MathOf<T>::type;
  using V = typename M::V;
  constexpr int W = Problem<T>::W();
  const int64_t N = NT > 0 ? NT : p.N;
  const int64_t K = p.K;
  const int64_t d0 = g * p.dg + j * W;
  const int nv = (int)std::min<int64_t>(W, p.dg - j * W);

  V a_fixed[NT > 0 ? NT : 1], h_fixed[NT > 0 ? NT : 1];
  V* heap = scratch<V>((NT > 0 ? 0 : 2 * N) + 4 * K);
  V* a = NT > 0 ? a_fixed : heap;
  V* h = NT > 0 ? h_fixed : heap + N;
  V* dls = heap + (NT > 0 ? 0 : 2 * N);  // per chunk: step sizes, delta * u, outputs, exp(-|.|)
  V* dus = dls + K;
  V* ys = dus + K;
  V* es = ys + K;
  for (int64_t n = 0; n < N; ++n) {
    a[n] = loadv<V>(p.A2t + n * p.d + d0, nv);
    h[n] = V{};
  }
  const V bias = p.bias ? loadv<V>(p.bias + d0, nv) : V{};
  const V Dv = p.D ? loadv<V>(p.D + d0, nv) : V{};
  const T* up = p.u + b * p.u_sb + d0;
  const T* dp = p.delta + b * p.dl_sb + (p.P ? 0 : d0);
  const T* zp = p.z ? p.z + b * p.z_sb + d0 : nullptr;
  const T* Bp = p.B + b * p.B_sb + g * p.B_sg;
  const T* Cp = p.C + b * p.C_sb + g * p.C_sg;
  T* op = out + b * p.L * p.d + d0;

  for (int64_t c = 0; c < p.nchunks; ++c) {
    const int64_t t0 = c * K, T_ = std::min(K, p.L - t0);
    if (c > 0) {
      T* cpc = cp + p.checkpoint_offset(b, g, j, c);
      for (int64_t n = 0; n < N; ++n) storev(cpc + n * W, h[n], W);
    }
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = t0 + i;
      if (t + kPrefetch < p.L) {
        prefetch_row(up + (t + kPrefetch) * p.u_sl);
        prefetch_row(dp + (t + kPrefetch) * p.dl_sl);
        if (zp) prefetch_row(zp + (t + kPrefetch) * p.z_sl);
        prefetch_for_write(op + p.row(t + kPrefetch) * p.d);
      }
      const V x = raw_step<V>(p, dp, t, d0, nv) + bias;
      dls[i] = x;
      if (p.softplus) es[i] = M::exp_neg_abs(x);
    }
    for (int64_t i = 0; i < T_; ++i) {
      V dl = dls[i];
      if (p.softplus) {
        V sg;
        M::softplus_from(dl, es[i], dl, sg);
      }
      dls[i] = dl;
      dus[i] = dl * loadv<V>(up + (t0 + i) * p.u_sl, nv);
    }
    for (int64_t i = 0; i < T_; ++i) {
      const V dl = dls[i], du = dus[i];
      const T* Bt = Bp + (t0 + i) * p.B_sl;
      const T* Ct = Cp + (t0 + i) * p.C_sl;
      V y{};
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        const V dA = M::decay(dl, a[n]);
        h[n] = dA * h[n] + du * Bt[n * p.B_sn];
        y += h[n] * Ct[n * p.C_sn];
      }
      ys[i] = y;
    }
    if (zp)
      for (int64_t i = 0; i < T_; ++i) es[i] = M::exp_neg_abs(loadv<V>(zp + (t0 + i) * p.z_sl, nv));
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = t0 + i;
      V y = ys[i];
      if (p.D) y += Dv * loadv<V>(up + t * p.u_sl, nv);
      if (zp) {
        const V zv = loadv<V>(zp + t * p.z_sl, nv);
        y = y * (zv * M::sigmoid_from(zv, es[i]));
      }
      storev(op + p.row(t) * p.d, y, nv);
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int i = 0; i < nv; ++i) last[(b * p.d + d0 + i) * N + n] = h[n][i];
}

// ---------------------------------------------------------------------------------------------
// Backward: one (batch element, group, slab of channel blocks) per call.

template <typename T>
struct Grads {
  const T* gout;  // (batch, L, d), unit stride along d
  int64_t go_sb, go_sl;
  const T* glast;  // (batch, d, N) contiguous
  const T* cp;     // (batch, blocks, nchunks - 1, N, W): see Problem::checkpoint_offset
  T *gu, *gdelta, *gz;  // (batch, L, d) contiguous; gdelta with a low-rank step: (slabs, batch, L, G, R)
  T* gP;                // (batch, R, d): the low-rank step's projection, per batch element (or null)
  T *gB, *gC;           // (slabs, batch, L, G, N) contiguous
  T* gA;                // (batch, N, d): per batch element, summed by the caller
  T *gD, *gbias;        // (batch, d): likewise
  int64_t slabs;
};

template <typename T, int NT>
void backward_slab(const Problem<T>& p, const Grads<T>& q, int64_t b, int64_t g, int64_t s) {
  using M = typename MathOf<T>::type;
  using V = typename M::V;
  constexpr int W = Problem<T>::W();
  const int64_t N = NT > 0 ? NT : p.N;
  const int64_t K = p.K;
  const int64_t nbg = p.blocks_per_group();
  const int64_t j0 = s * nbg / q.slabs, j1 = (s + 1) * nbg / q.slabs, nblk = j1 - j0;

  // Per-thread buffers (see the header comment): the chunk's decayed previous states dA_t h_{t-1} and decays;
  // per timestep of the chunk the step size, softplus' derivative, delta * u, u, the output's gradient times
  // the gate, the factor of y in z's gradient, y; the lane-wise dB/dC partial sums of the chunk; each block's
  // adjoint state and sums.
  const int64_t R = p.P ? p.R : 0;
  const int64_t per_chunk = 4 * K * N + 9 * K + K * R, per_block = N + N + 2 + R;
  V* const buf = scratch<V>(per_chunk + nblk * per_block + (NT > 0 ? 0 : 3 * N));
  V *Ps = buf, *dAs = Ps + K * N, *PB = dAs + K * N, *PC = PB + K * N;
  V *dls = PC + K * N, *sgs = dls + K, *dus = sgs + K, *uvs = dus + K, *gys = uvs + K, *gzf = gys + K;
  V *es = gzf + K, *ezs = es + K;  // exp(-|delta + bias|), exp(-|z|)
  V *ys = ezs + K;
  V *PD = ys + K;  // low-rank step: the chunk's lane-wise partial sums of its input's gradient, (K, R)
  V *gcarry = PD + K * R, *gA_acc = gcarry + nblk * N, *gD_acc = gA_acc + nblk * N, *gb_acc = gD_acc + nblk;
  V *gP_acc = gb_acc + nblk;  // (blocks, R): the projection's gradient
  const V zero{}, one = M::bc(1);
  std::fill(gA_acc, gA_acc + nblk * N + 2 * nblk + nblk * R, zero);
  V a_fixed[NT > 0 ? NT : 1], g_fixed[NT > 0 ? NT : 1], ga_fixed[NT > 0 ? NT : 1];
  V* heap = gP_acc + nblk * R;
  V* a = NT > 0 ? a_fixed : heap;
  V* gs = NT > 0 ? g_fixed : heap + N;
  V* ga = NT > 0 ? ga_fixed : heap + 2 * N;

  for (int64_t jb = 0; jb < nblk; ++jb) {
    const int64_t d0 = g * p.dg + (j0 + jb) * W;
    const int nv = (int)std::min<int64_t>(W, p.dg - (j0 + jb) * W);
    for (int64_t n = 0; n < N; ++n) {
      V v{};
      for (int i = 0; i < nv; ++i) v[i] = q.glast[(b * p.d + d0 + i) * N + n];
      gcarry[jb * N + n] = v;
    }
  }

  const T* Bp = p.B + b * p.B_sb + g * p.B_sg;
  const T* Cp = p.C + b * p.C_sb + g * p.C_sg;
  // Prefetching (see kPrefetch): the rows of the (block, chunk) processed next are requested while this one
  // runs its recurrences, spread over their timesteps.
  auto block_rows = [&](int64_t jb, int64_t t) {
    const int64_t d0 = g * p.dg + (j0 + jb) * W;
    prefetch_row(p.u + b * p.u_sb + t * p.u_sl + d0);
    prefetch_row(p.delta + b * p.dl_sb + t * p.dl_sl + (p.P ? 0 : d0));
    prefetch_row(q.gout + b * q.go_sb + t * q.go_sl + d0);
    prefetch_for_write(q.gu + (b * p.L + p.row(t)) * p.d + d0);
    if (!p.P) prefetch_for_write(q.gdelta + (b * p.L + p.row(t)) * p.d + d0);
    if (p.z) {
      prefetch_row(p.z + b * p.z_sb + t * p.z_sl + d0);
      prefetch_for_write(q.gz + (b * p.L + p.row(t)) * p.d + d0);
    }
    if (jb == 0 && p.B_sn == 1 && p.C_sn == 1) {  // B_t, C_t: shared by the blocks, cold for the first
      prefetch_row(Bp + t * p.B_sl);
      prefetch_row(Bp + t * p.B_sl + N - 1);
      prefetch_row(Cp + t * p.C_sl);
      prefetch_row(Cp + t * p.C_sl + N - 1);
    }
  };
  const Butterfly<V, T> butterfly;
  for (int64_t t = (p.nchunks - 1) * K; t < p.L; ++t) block_rows(0, t);
  for (int64_t c = p.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * K, T_ = std::min(K, p.L - t0);
    std::fill(PB, PB + T_ * N, zero);
    std::fill(PC, PC + T_ * N, zero);
    std::fill(PD, PD + T_ * R, zero);
    for (int64_t jb = 0; jb < nblk; ++jb) {
      const int64_t d0 = g * p.dg + (j0 + jb) * W;
      const int nv = (int)std::min<int64_t>(W, p.dg - (j0 + jb) * W);
      for (int64_t n = 0; n < N; ++n) a[n] = loadv<V>(p.A2t + n * p.d + d0, nv);
      const V bias = p.bias ? loadv<V>(p.bias + d0, nv) : V{};
      const V Dv = p.D ? loadv<V>(p.D + d0, nv) : V{};
      const T* up = p.u + b * p.u_sb + d0;
      const T* dp = p.delta + b * p.dl_sb + (p.P ? 0 : d0);
      const T* zp = p.z ? p.z + b * p.z_sb + d0 : nullptr;
      const T* gop = q.gout + b * q.go_sb + d0;
      const int64_t next_jb = jb + 1 < nblk ? jb + 1 : 0, next_c = jb + 1 < nblk ? c : c - 1;
      const int64_t next_t0 = next_c * K, next_T = next_c >= 0 ? std::min(K, p.L - next_t0) : 0;
      if (next_T > 0 && next_c > 0) {
        const T* next_cp = q.cp + p.checkpoint_offset(b, g, j0 + next_jb, next_c);
        for (int64_t k = 0; k < N * W; k += 64 / (int64_t)sizeof(T)) prefetch_row(next_cp + k);
      }

      // The chunk's per-timestep quantities (independent across timesteps: one loop, see forward_block).
      for (int64_t i = 0; i < T_; ++i) {
        const int64_t t = t0 + i;
        const V x = raw_step<V>(p, dp, t, d0, nv) + bias;
        dls[i] = x;
        if (p.softplus) es[i] = M::exp_neg_abs(x);
        if (zp) ezs[i] = M::exp_neg_abs(loadv<V>(zp + t * p.z_sl, nv));
      }
      for (int64_t i = 0; i < T_; ++i) {
        const int64_t t = t0 + i;
        const V uv = loadv<V>(up + t * p.u_sl, nv);
        V dl = dls[i];
        V sg = one;
        if (p.softplus) M::softplus_from(dl, es[i], dl, sg);
        dls[i] = dl;
        sgs[i] = sg;
        uvs[i] = uv;
        dus[i] = dl * uv;
        const V go = loadv<V>(gop + t * q.go_sl, nv);
        if (zp) {
          const V zv = loadv<V>(zp + t * p.z_sl, nv);
          const V sgz = M::sigmoid_from(zv, ezs[i]);
          gys[i] = go * (zv * sgz);                            // dLoss/dy through out = y silu(z)
          gzf[i] = go * (sgz * (zv * (one - sgz) + one));      // dLoss/dz = gzf * y
        } else {
          gys[i] = go;
        }
      }

      // Recompute the chunk's states from its checkpoint.  Kept for the adjoint: the decays dA_t and the
      // decayed previous states dA_t h_{t-1} (all the adjoint needs of h); dC_t and y_t, which need h_t,
      // are accumulated here.
      {
        if (c > 0) {
          const T* cpp = q.cp + p.checkpoint_offset(b, g, j0 + jb, c);
          for (int64_t n = 0; n < N; ++n) gs[n] = loadv<V>(cpp + n * W, W);  // gs holds the state here
        } else {
          for (int64_t n = 0; n < N; ++n) gs[n] = zero;
        }
        for (int64_t i = 0; i < T_; ++i) {
          if (i < next_T) block_rows(next_jb, next_t0 + i);
          const V dl = dls[i], du = dus[i], gy = gys[i];
          const T* Bt = Bp + (t0 + i) * p.B_sl;
          const T* Ct = Cp + (t0 + i) * p.C_sl;
          V* prow = &Ps[i * N];
          V* drow = &dAs[i * N];
          V* pc = &PC[i * N];
          V y{};
#pragma GCC unroll 16
          for (int64_t n = 0; n < N; ++n) {
            const V dA = M::decay(dl, a[n]);
            const V decayed = dA * gs[n];
            gs[n] = decayed + du * Bt[n * p.B_sn];
            prow[n] = decayed;
            drow[n] = dA;
            const T cn = Ct[n * p.C_sn];
            pc[n] += gy * gs[n];  // dC_t: sum over channels of gy_t h_t
            if (zp) y += gs[n] * cn;
          }
          if (zp) ys[i] = y;
        }
        for (int64_t i = T_; i < next_T; ++i) block_rows(next_jb, next_t0 + i);  // a longer next chunk
      }

      // The adjoint, from the chunk's end back to its start.
      for (int64_t n = 0; n < N; ++n) {
        gs[n] = gcarry[jb * N + n];
        ga[n] = gA_acc[jb * N + n];
      }
      V gD = gD_acc[jb], gb = gb_acc[jb];
      for (int64_t i = T_ - 1; i >= 0; --i) {
        const int64_t t = t0 + i;
        const V dl = dls[i], du = dus[i], gy = gys[i];
        const T* Bt = Bp + t * p.B_sl;
        const T* Ct = Cp + t * p.C_sl;
        const V* prow = &Ps[i * N];
        const V* drow = &dAs[i * N];
        V* pb = &PB[i * N];
        V gdu{}, gdl{};
#pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
          const V gn = gs[n] + gy * Ct[n * p.C_sn];  // dLoss/dh_t
          pb[n] += gn * du;
          gdu += gn * Bt[n * p.B_sn];
          const V glog = gn * prow[n];  // dLoss/d(delta_t A_n): h_t's derivative times dA_t h_{t-1}
          gdl += glog * a[n];
          ga[n] += glog * dl;
          gs[n] = gn * drow[n];  // dLoss/dh_{t-1} through h_t
        }
        const V uv = uvs[i];
        if (zp) {
          V y = ys[i];
          if (p.D) y += Dv * uv;
          storev(q.gz + (b * p.L + p.row(t)) * p.d + d0, gzf[i] * y, nv);
        }
        gD += gy * uv;
        const V gdelta_sp = gdl * M::kDecayUnscale + gdu * uv;  // d/d(delta after softplus)
        V gu = gdu * dl;
        if (p.D) gu += gy * Dv;
        const V graw = gdelta_sp * sgs[i];
        gb += graw;
        storev(q.gu + (b * p.L + p.row(t)) * p.d + d0, gu, nv);
        if (p.P) {  // the low-rank step: its input's gradient (summed over channels below) and P's
          const T* row = dp + t * p.dl_sl;
          for (int64_t r = 0; r < R; ++r) {
            gP_acc[jb * R + r] += graw * row[r * p.dl_sr];
            PD[i * R + r] += graw * loadv<V>(p.P + r * p.d + d0, nv);
          }
        } else {
          storev(q.gdelta + (b * p.L + p.row(t)) * p.d + d0, graw, nv);
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        gcarry[jb * N + n] = gs[n];
        gA_acc[jb * N + n] = ga[n];
      }
      gD_acc[jb] = gD;
      gb_acc[jb] = gb;
    }
    // dB, dC of the chunk: the lane sums of the block-summed partial products, W state elements at a time.
    for (int64_t i = 0; i < T_; ++i) {
      T* gBt = q.gB + ((s * p.batch + b) * p.L + p.row(t0 + i)) * p.G * N + g * N;
      T* gCt = q.gC + ((s * p.batch + b) * p.L + p.row(t0 + i)) * p.G * N + g * N;
      for (int64_t n0 = 0; n0 < N; n0 += W) {
        const int count = (int)std::min<int64_t>(W, N - n0);
        V tb[W], tc[W];
        for (int k = 0; k < W; ++k) {
          tb[k] = k < count ? PB[i * N + n0 + k] : zero;
          tc[k] = k < count ? PC[i * N + n0 + k] : zero;
        }
        storev(gBt + n0, butterfly.sum(tb), count);
        storev(gCt + n0, butterfly.sum(tc), count);
      }
      T* gDt = q.gdelta + ((s * p.batch + b) * p.L + p.row(t0 + i)) * p.G * R + g * R;
      for (int64_t r0 = 0; r0 < R; r0 += W) {
        const int count = (int)std::min<int64_t>(W, R - r0);
        V td[W];
        for (int k = 0; k < W; ++k) td[k] = k < count ? PD[i * R + r0 + k] : zero;
        storev(gDt + r0, butterfly.sum(td), count);
      }
    }
  }
  for (int64_t jb = 0; jb < nblk; ++jb) {
    const int64_t d0 = g * p.dg + (j0 + jb) * W;
    const int nv = (int)std::min<int64_t>(W, p.dg - (j0 + jb) * W);
    for (int64_t n = 0; n < N; ++n) storev(q.gA + (b * N + n) * p.d + d0, gA_acc[jb * N + n], nv);
    for (int64_t r = 0; r < R; ++r) storev(q.gP + (b * R + r) * p.d + d0, gP_acc[jb * R + r], nv);
    if (q.gD) storev(q.gD + b * p.d + d0, gD_acc[jb], nv);
    if (q.gbias) storev(q.gbias + b * p.d + d0, gb_acc[jb], nv);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points.

void check_token(const at::Tensor& t, const char* name, const at::Tensor& u) {
  TORCH_CHECK(t.dim() == 3 && t.sizes() == u.sizes(), "cpu_scan: ", name, " must have u's shape (batch, L, d_inner)");
  TORCH_CHECK(t.stride(2) == 1 || t.size(2) == 1, "cpu_scan: ", name, " needs unit stride along d_inner");
  TORCH_CHECK(t.scalar_type() == u.scalar_type(), "cpu_scan: ", name, " must have u's dtype");
  TORCH_CHECK(t.device().is_cpu(), "cpu_scan: ", name, " must be a CPU tensor");
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A2t, const at::Tensor& B,
                        const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& proj,
                        bool softplus, int64_t K, bool reverse) {
  Problem<T> p;
  p.reverse = reverse;
  p.P = proj ? proj->data_ptr<T>() : nullptr;
  p.R = proj ? proj->size(0) : 0;
  p.dl_sr = proj ? delta.stride(2) : 0;
  p.batch = u.size(0);
  p.L = u.size(1);
  p.d = u.size(2);
  p.N = A2t.size(0);
  p.G = B.size(2);
  p.dg = p.d / p.G;
  p.K = K;
  p.nchunks = (p.L + K - 1) / K;
  p.softplus = softplus;
  p.u = u.data_ptr<T>();
  p.u_sb = u.stride(0);
  p.u_sl = u.stride(1);
  p.delta = delta.data_ptr<T>();
  p.dl_sb = delta.stride(0);
  p.dl_sl = delta.stride(1);
  p.z = z ? z->data_ptr<T>() : nullptr;
  p.z_sb = z ? z->stride(0) : 0;
  p.z_sl = z ? z->stride(1) : 0;
  p.B = B.data_ptr<T>();
  p.B_sb = B.stride(0);
  p.B_sl = B.stride(1);
  p.B_sg = B.stride(2);
  p.B_sn = B.stride(3);
  p.C = C.data_ptr<T>();
  p.C_sb = C.stride(0);
  p.C_sl = C.stride(1);
  p.C_sg = C.stride(2);
  p.C_sn = C.stride(3);
  p.A2t = A2t.data_ptr<T>();
  p.D = D ? D->data_ptr<T>() : nullptr;
  p.bias = bias ? bias->data_ptr<T>() : nullptr;
  if (reverse) {  // start at the last token, step back in time
    for (auto [ptr, sl] : {std::pair<const T**, int64_t*>{&p.u, &p.u_sl}, {&p.delta, &p.dl_sl}, {&p.z, &p.z_sl},
                           {&p.B, &p.B_sl}, {&p.C, &p.C_sl}}) {
      if (*ptr) *ptr += (p.L - 1) * *sl;
      *sl = -*sl;
    }
  }
  return p;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& proj, int64_t K) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "cpu_scan: float32 or float64 tensors only, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3 && u.size(1) >= 1, "cpu_scan: u must be (batch, L, d_inner) with L >= 1");
  check_token(u, "u", u);
  if (proj) {  // the low-rank step: delta is (batch, L, R), proj (R, d_inner)
    TORCH_CHECK(proj->dim() == 2 && proj->size(1) == u.size(2) && proj->size(0) >= 1 && proj->is_contiguous() &&
                    proj->scalar_type() == u.scalar_type(),
                "cpu_scan: delta_proj must be a contiguous (R, d_inner) tensor of u's dtype");
    TORCH_CHECK(delta.dim() == 3 && delta.size(0) == u.size(0) && delta.size(1) == u.size(1) &&
                    delta.size(2) == proj->size(0) && delta.scalar_type() == u.scalar_type(),
                "cpu_scan: with delta_proj, delta must be (batch, L, R) of u's dtype");
  } else {
    check_token(delta, "delta", u);
  }
  if (z) check_token(*z, "z", u);
  const int64_t d = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == d && A.size(1) >= 1, "cpu_scan: A must be (d_inner, N)");
  for (const at::Tensor* t : {&B, &C}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == u.size(0) && t->size(1) == u.size(1) && t->size(3) == A.size(1) &&
                    t->size(2) >= 1 && d % t->size(2) == 0,
                "cpu_scan: B and C must be (batch, L, groups, N) with groups dividing d_inner");
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "cpu_scan: B and C must have u's dtype");
  }
  TORCH_CHECK(B.size(2) == C.size(2), "cpu_scan: B and C must have the same groups");
  for (const c10::optional<at::Tensor>* t : {&D, &bias}) {
    if (*t) {
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == d && (*t)->is_contiguous() &&
                      (*t)->scalar_type() == u.scalar_type(),
                  "cpu_scan: D and delta_bias must be contiguous (d_inner,) tensors of u's dtype");
    }
  }
  TORCH_CHECK(A.scalar_type() == u.scalar_type(), "cpu_scan: A must have u's dtype");
  TORCH_CHECK(K >= 1, "cpu_scan: chunk must be positive");
}

at::Tensor slabs_sum(const at::Tensor& t) { return t.size(0) == 1 ? t.select(0, 0) : t.sum(0); }

at::Tensor prescaled_At(const at::Tensor& A, double scale) {
  return (A * scale).t().contiguous();  // (N, d)
}

std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                     const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                     const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                     const c10::optional<at::Tensor>& proj, bool softplus, int64_t chunk,
                                     bool reverse) {
  check_inputs(u, delta, A, B, C, D, z, bias, proj, chunk);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = A.size(1);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  auto out = at::empty({batch, L, d}, u.options());
  auto last = at::empty({batch, d, N}, u.options());
  const int64_t lanes = kVecBytes / u.element_size(), G = B.size(2), blocks = G * ((d / G + lanes - 1) / lanes);
  auto cp = at::empty({batch, blocks, nchunks - 1, N, lanes}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "cpu_scan_forward", [&] {
    using M = typename MathOf<scalar_t>::type;
    const at::Tensor A2t = prescaled_At(A, M::kDecayScale);
    const Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A2t, B, C, D, z, bias, proj, softplus, chunk, reverse);
    const int64_t nbg = p.blocks_per_group(), items = batch * p.G * nbg;
    scalar_t *o = out.data_ptr<scalar_t>(), *l = last.data_ptr<scalar_t>(), *c = cp.data_ptr<scalar_t>();
    at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t it = lo; it < hi; ++it) {
        const int64_t b = it / (p.G * nbg), g = (it / nbg) % p.G, j = it % nbg;
        if (N == 16)
          forward_block<scalar_t, 16>(p, b, g, j, o, l, c);
        else
          forward_block<scalar_t, 0>(p, b, g, j, o, l, c);
      }
    });
  });
  return {out, last, cp};
}

std::vector<at::Tensor> scan_backward(const at::Tensor& gout, const at::Tensor& glast, const at::Tensor& u,
                                      const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                                      const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                      const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                      const c10::optional<at::Tensor>& proj, const at::Tensor& checkpoints,
                                      bool softplus, int64_t chunk, bool reverse) {
  check_inputs(u, delta, A, B, C, D, z, bias, proj, chunk);
  check_token(gout, "the output's gradient", u);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = A.size(1), G = B.size(2);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  TORCH_CHECK(glast.sizes() == at::IntArrayRef({batch, d, N}) && glast.is_contiguous() &&
                  glast.scalar_type() == u.scalar_type(),
              "cpu_scan: the last state's gradient must be a contiguous (batch, d_inner, N) tensor of u's dtype");
  const int64_t lanes = kVecBytes / u.element_size(), blocks = G * ((d / G + lanes - 1) / lanes);
  TORCH_CHECK(checkpoints.sizes() == at::IntArrayRef({batch, blocks, nchunks - 1, N, lanes}) &&
                  checkpoints.is_contiguous() &&
                  checkpoints.scalar_type() == u.scalar_type(),
              "cpu_scan: checkpoints do not match the inputs (were they made with another chunk?)");
  const auto opts = u.options();
  const int64_t R = proj ? proj->size(0) : 0;
  auto gu = at::empty({batch, L, d}, opts);
  auto gP_part = proj ? at::empty({batch, R, d}, opts) : at::empty({0}, opts);
  at::Tensor gdelta;
  auto gz = z ? at::empty({batch, L, d}, opts) : at::empty({0}, opts);
  auto gA_part = at::empty({batch, N, d}, opts);
  auto gD_part = D ? at::empty({batch, d}, opts) : at::empty({0}, opts);
  auto gb_part = bias ? at::empty({batch, d}, opts) : at::empty({0}, opts);
  at::Tensor gB, gC;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "cpu_scan_backward", [&] {
    using M = typename MathOf<scalar_t>::type;
    const at::Tensor A2t = prescaled_At(A, M::kDecayScale);
    const Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A2t, B, C, D, z, bias, proj, softplus, chunk, reverse);
    const int64_t nbg = p.blocks_per_group();
    const int64_t threads = at::get_num_threads();
    int64_t slabs = 1;
    if (batch * G < threads) slabs = std::min(nbg, (threads + batch * G - 1) / (batch * G));
    gB = at::empty({slabs, batch, L, G, N}, opts);
    gC = at::empty({slabs, batch, L, G, N}, opts);
    gdelta = proj ? at::empty({slabs, batch, L, G, R}, opts) : at::empty({batch, L, d}, opts);
    Grads<scalar_t> q;
    q.gout = gout.data_ptr<scalar_t>() + (reverse ? (L - 1) * gout.stride(1) : 0);
    q.go_sb = gout.stride(0);
    q.go_sl = reverse ? -gout.stride(1) : gout.stride(1);
    q.glast = glast.data_ptr<scalar_t>();
    q.cp = checkpoints.data_ptr<scalar_t>();
    q.gu = gu.data_ptr<scalar_t>();
    q.gdelta = gdelta.data_ptr<scalar_t>();
    q.gP = proj ? gP_part.data_ptr<scalar_t>() : nullptr;
    q.gz = z ? gz.data_ptr<scalar_t>() : nullptr;
    q.gB = gB.data_ptr<scalar_t>();
    q.gC = gC.data_ptr<scalar_t>();
    q.gA = gA_part.data_ptr<scalar_t>();
    q.gD = D ? gD_part.data_ptr<scalar_t>() : nullptr;
    q.gbias = bias ? gb_part.data_ptr<scalar_t>() : nullptr;
    q.slabs = slabs;
    const int64_t items = batch * G * slabs;
    at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t it = lo; it < hi; ++it) {
        const int64_t b = it / (G * slabs), g = (it / slabs) % G, s = it % slabs;
        if (N == 16)
          backward_slab<scalar_t, 16>(p, q, b, g, s);
        else
          backward_slab<scalar_t, 0>(p, q, b, g, s);
      }
    });
  });
  gB = slabs_sum(gB);
  gC = slabs_sum(gC);
  if (proj) gdelta = slabs_sum(gdelta).sum(2);  // (batch, L, R): every group's channels and slab summed
  auto gA = gA_part.sum(0).t().contiguous();
  auto gD = D ? gD_part.sum(0) : gD_part;
  auto gbias = bias ? gb_part.sum(0) : gb_part;
  auto gproj = proj ? gP_part.sum(0) : gP_part;  // (R, d_inner)
  return {gu, gdelta, gA, gB, gC, gD, gz, gbias, gproj};
}

}  // namespace

// The depthwise causal conv (+ SiLU) in front of the scan: cpu_conv.cpp.
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& taps, const c10::optional<at::Tensor>& bias,
                        bool silu, bool reverse);
std::vector<at::Tensor> conv_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& taps,
                                      const c10::optional<at::Tensor>& bias, bool silu, bool reverse);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_forward", &conv_forward, "depthwise causal conv1d (token layout), SiLU optional: y");
  m.def("conv_backward", &conv_backward, "its backward: gradients of x, taps (K, channels), bias");
  m.def("scan_forward", &scan_forward, "selective scan forward (token layout): out, last state, checkpoints");
  m.def("scan_backward", &scan_backward,
        "selective scan backward: gradients of u, delta, A, B, C, D, z, delta_bias, delta_proj");
  m.def("vector_bytes", [] { return kVecBytes; }, "SIMD vector width the kernel was compiled for, in bytes");
}
