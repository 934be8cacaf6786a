//! [`CpuLayer`]: one BERT transformer layer on plain `f32` slices, for CPU inference.
//!
//! With candle ops around the packed products, everything but the products (a tensor and a pass
//! over memory per step, a thread-pool dispatch per matmul, a separate residual add before each
//! layer norm, an additive mask) took about a fifth of the forward at 32 tokens (README, "Speed").
//! Here a layer is four [`PackedLinear`] products (bias fused in), attention over each prompt's
//! real tokens only (its two products through the same packed kernel), the GELU in place, and
//! residual + layer norm in one pass. Every step works row by row and a prompt's attention reads
//! only its own keys, so a prompt gets bit-identical hidden states alone and inside a padded batch.

use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::bert::{erf_rational, BertConfig, HiddenAct};
use crate::packed::PackedLinear;

/// A layer norm's parameters.
#[derive(Debug, Clone)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get(width, "weight")?.to_vec1()?,
            beta: vb.get(width, "bias")?.to_vec1()?,
            eps: eps as f32,
        })
    }

    /// `rows ← layer_norm(rows + residual)`, row by row (`rows` and `residual` are `[n, width]`).
    fn add_and_normalize(&self, rows: &mut [f32], residual: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the function only needs AVX2 and FMA, which were just detected.
            unsafe { self.add_and_normalize_avx2_fma(rows, residual) };
            return;
        }
        self.add_and_normalize_generic(rows, residual);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn add_and_normalize_avx2_fma(&self, rows: &mut [f32], residual: &[f32]) {
        self.add_and_normalize_generic(rows, residual);
    }

    #[inline(always)]
    fn add_and_normalize_generic(&self, rows: &mut [f32], residual: &[f32]) {
        let width = self.gamma.len();
        for (row, skip) in rows
            .chunks_exact_mut(width)
            .zip(residual.chunks_exact(width))
        {
            for (value, skip) in row.iter_mut().zip(skip) {
                *value += skip;
            }
            let mean = lane_sum(row, |v| v) / width as f32;
            let variance = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for ((value, gamma), beta) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *value = (*value - mean) * scale * gamma + beta;
            }
        }
    }
}

/// The sum of `term(v)` over `values` in [`LANES`] partial sums, which the compiler keeps in one
/// vector register (a single running `f32` sum is a chain it must not reorder).
#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (sum, &value) in sums.iter_mut().zip(chunk) {
            *sum += term(value);
        }
    }
    sums.iter().sum::<f32>() + rest.iter().map(|&value| term(value)).sum::<f32>()
}

/// One BERT layer with its weights packed for the CPU.
#[derive(Debug, Clone)]
pub(crate) struct CpuLayer {
    /// Q, K and V in one product: `[hidden] → [3 × hidden]`.
    qkv: PackedLinear,
    attention_out: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
}

/// Packs a `[outputs, inputs]` weight and its bias; several (Q, K, V) are concatenated along the
/// outputs.
fn pack(vbs: &[VarBuilder], inputs: usize, outputs: usize) -> candle_core::Result<PackedLinear> {
    let (mut weights, mut biases) = (Vec::new(), Vec::new());
    for vb in vbs {
        weights.extend(
            vb.get((outputs, inputs), "weight")?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        biases.extend(vb.get(outputs, "bias")?.to_vec1::<f32>()?);
    }
    PackedLinear::new(&weights, &biases, inputs, outputs * vbs.len())
        .map_err(candle_core::Error::Msg)
}

impl CpuLayer {
    /// Loads layer weights named as in Hugging Face's `BertLayer` (f32).
    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        Ok(Self {
            qkv: pack(&[own.pp("query"), own.pp("key"), own.pp("value")], h, h)?,
            attention_out: pack(&[attention.pp("output").pp("dense")], h, h)?,
            attention_norm: Norm::load(
                attention.pp("output").pp("LayerNorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            intermediate: pack(
                &[vb.pp("intermediate").pp("dense")],
                h,
                cfg.intermediate_size,
            )?,
            output: pack(&[vb.pp("output").pp("dense")], cfg.intermediate_size, h)?,
            output_norm: Norm::load(vb.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    /// Hidden states `[batch × seq, hidden]` in, the layer's output out, in place; row `b` of the
    /// batch has `lengths[b]` real tokens (its other positions are padding and never attended
    /// to). `buffers` is the working memory, kept from layer to layer.
    pub(crate) fn forward(
        &self,
        hidden: &mut Vec<f32>,
        seq: usize,
        lengths: &[usize],
        buffers: &mut LayerBuffers,
    ) -> candle_core::Result<()> {
        let LayerBuffers {
            qkv,
            context,
            attended,
            inner,
            output,
            blocks,
            head,
        } = buffers;
        self.qkv.apply_into(hidden, blocks, qkv, true);
        self.attention(qkv, seq, lengths, context, head)
            .map_err(candle_core::Error::Msg)?;
        self.attention_out
            .apply_into(context, blocks, attended, true);
        self.attention_norm.add_and_normalize(attended, hidden);
        self.intermediate.apply_into(attended, blocks, inner, true);
        activate(self.act, inner);
        self.output.apply_into(inner, blocks, output, true);
        self.output_norm.add_and_normalize(output, attended);
        std::mem::swap(hidden, output);
        Ok(())
    }

    /// Scaled dot-product attention of every head of every prompt into `context`
    /// (`[batch × seq, hidden]`), heads in parallel when there are threads and work enough:
    /// `qkv` is `[batch × seq, 3 × hidden]`. On one thread every head uses `scratch`.
    fn attention(
        &self,
        qkv: &[f32],
        seq: usize,
        lengths: &[usize],
        context: &mut Vec<f32>,
        scratch: &mut HeadScratch,
    ) -> Result<(), String> {
        let hidden = self.heads * self.head_dim;
        let tasks: Vec<(usize, usize)> = (0..lengths.len())
            .flat_map(|b| (0..self.heads).map(move |h| (b, h)))
            .collect();
        let head = |scratch: &mut HeadScratch, &(b, h): &(usize, usize)| {
            let rows = &qkv[b * seq * 3 * hidden..(b + 1) * seq * 3 * hidden];
            attend_head(
                rows,
                3 * hidden,
                h * self.head_dim,
                hidden,
                self.head_dim,
                lengths[b].min(seq),
                scratch,
            )
        };
        let parallel = rayon::current_num_threads() > 1
            && lengths.len() * seq * seq * hidden >= ATTENTION_PARALLEL_WORK;
        let heads: Vec<Vec<f32>> = if parallel {
            tasks
                .par_iter()
                .map_init(HeadScratch::default, head)
                .collect::<Result<_, _>>()?
        } else {
            tasks
                .iter()
                .map(|task| head(scratch, task))
                .collect::<Result<_, _>>()?
        };
        // Every value is written below: only a grown buffer's new part is zeroed.
        context.resize(lengths.len() * seq * hidden, 0.0);
        for (&(b, h), values) in tasks.iter().zip(&heads) {
            for (i, row) in values.chunks_exact(self.head_dim).enumerate() {
                context[(b * seq + i) * hidden + h * self.head_dim..][..self.head_dim]
                    .copy_from_slice(row);
            }
        }
        Ok(())
    }
}

/// The working memory of [`CpuLayer::forward`], reused from layer to layer so a long prompt's
/// megabyte-sized activations are not freed and allocated again (fresh pages from the kernel
/// must be cleared: 16 % of a 512-token forward before these were kept).
#[derive(Debug, Default)]
pub(crate) struct LayerBuffers {
    /// Q, K and V of every token: `[batch × seq, 3 × hidden]`.
    qkv: Vec<f32>,
    /// Attention's output: `[batch × seq, hidden]`.
    context: Vec<f32>,
    /// After the attention's output projection and layer norm: `[batch × seq, hidden]`.
    attended: Vec<f32>,
    /// The feed-forward's inner activations: `[batch × seq, intermediate]`.
    inner: Vec<f32>,
    /// The layer's output before it becomes the next layer's input: `[batch × seq, hidden]`.
    output: Vec<f32>,
    /// The packed products' panel-major blocks.
    blocks: Vec<f32>,
    /// Attention's per-head memory on the calling thread.
    head: HeadScratch,
}

impl LayerBuffers {
    /// Runs `work` with the buffers this thread kept from its previous forward (empty the first
    /// time), and keeps them for the next one unless they have grown past [`KEPT_FLOATS`]: a
    /// forward's megabyte-sized buffers freed and allocated again are fresh pages again (the
    /// allocator hands large blocks back to the kernel between calls).
    pub(crate) fn with_kept<T>(work: impl FnOnce(&mut LayerBuffers) -> T) -> T {
        thread_local! {
            static KEPT: std::cell::RefCell<LayerBuffers> = std::cell::RefCell::default();
        }
        // Taken out, not borrowed: a forward that panics or nests leaves empty buffers behind.
        let mut buffers = KEPT.with(|kept| kept.take());
        let result = work(&mut buffers);
        if buffers.floats() <= KEPT_FLOATS {
            KEPT.with(|kept| kept.replace(buffers));
        }
        result
    }

    /// The floats these buffers hold room for.
    fn floats(&self) -> usize {
        [
            &self.qkv,
            &self.context,
            &self.attended,
            &self.inner,
            &self.output,
            &self.blocks,
            &self.head.queries,
            &self.head.scores,
            &self.head.context,
            &self.head.blocks,
        ]
        .iter()
        .map(|buffer| buffer.capacity())
        .sum()
    }
}

/// At most this many floats (16 MiB) of [`LayerBuffers`] stay with a thread between forwards:
/// a 512-token prompt needs about 11 MiB; the buffers of a large batch are freed.
const KEPT_FLOATS: usize = 4 << 20;

/// The working memory of one attention head, reused from query block to query block and from
/// head to head on one thread.
#[derive(Debug, Default)]
struct HeadScratch {
    /// A block of the head's queries: `[QUERY_BLOCK, head_dim]`.
    queries: Vec<f32>,
    /// Their scores against every real key, then softmax weights: `[QUERY_BLOCK, length]`.
    scores: Vec<f32>,
    /// Their output: `[QUERY_BLOCK, head_dim]`.
    context: Vec<f32>,
    /// The packed products' panel-major blocks.
    blocks: Vec<f32>,
}

/// Queries per block of attention: a block's scores (`QUERY_BLOCK × length`, 128 KiB at 512
/// tokens) stay in the L2 cache from `Q·Kᵀ` through the softmax to `P·V`, where a whole head's
/// `length × length` scores (1 MiB) went out to memory and back.
const QUERY_BLOCK: usize = 64;

/// Below this many multiply–adds (`seq² × hidden` per prompt) attention stays on the calling
/// thread.
const ATTENTION_PARALLEL_WORK: usize = 1 << 20;

/// The feed-forward activation, in place.
fn activate(act: HiddenAct, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the function only needs AVX2 and FMA, which were just detected.
        unsafe { activate_avx2_fma(act, values) };
        return;
    }
    activate_generic(act, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn activate_avx2_fma(act: HiddenAct, values: &mut [f32]) {
    activate_generic(act, values);
}

#[inline(always)]
fn activate_generic(act: HiddenAct, values: &mut [f32]) {
    match act {
        HiddenAct::Gelu => values.iter_mut().for_each(|x| {
            *x = 0.5 * *x * (1.0 + erf_rational(*x * std::f32::consts::FRAC_1_SQRT_2))
        }),
        HiddenAct::GeluNew => values.iter_mut().for_each(|x| {
            let inner = 0.797_884_6 * (*x + 0.044_715 * *x * *x * *x);
            *x = 0.5 * *x * (1.0 + inner.tanh());
        }),
        HiddenAct::Relu => values.iter_mut().for_each(|x| *x = x.max(0.0)),
    }
}

/// One head of one prompt: `rows` is the prompt's `[seq, 3 × hidden]` Q/K/V block (row stride
/// `stride`), the head's query at column `offset`, its key at `offset + hidden` and value at
/// `offset + 2 × hidden`. Only the first `length` rows are real; queries past them get zeros (no
/// one reads them). Returns `[seq, head_dim]`.
///
/// Both products go through [`PackedLinear`]'s register-blocked kernel: the keys are packed as
/// the weight of `Q·Kᵀ` (one output per key) and the values, transposed, as the weight of `P·V`,
/// both straight from `rows`. The queries go through in blocks of [`QUERY_BLOCK`]. Only the
/// real keys are used, so padding costs nothing and a prompt's result does not depend on the
/// batch around it (nor on the blocks: the kernel computes every row the same way).
fn attend_head(
    rows: &[f32],
    stride: usize,
    offset: usize,
    hidden: usize,
    head_dim: usize,
    length: usize,
    scratch: &mut HeadScratch,
) -> Result<Vec<f32>, String> {
    let seq = rows.len() / stride;
    let mut output = vec![0f32; seq * head_dim];
    if length == 0 {
        return Ok(output);
    }
    let keys = PackedLinear::from_rows(rows, stride, offset + hidden, head_dim, length)?;
    let values = PackedLinear::from_columns(rows, stride, offset + 2 * hidden, length, head_dim)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let queries = rows[..length * stride].chunks(QUERY_BLOCK * stride);
    for (block, out) in queries.zip(output.chunks_mut(QUERY_BLOCK * head_dim)) {
        scratch.queries.clear();
        for row in block.chunks_exact(stride) {
            scratch
                .queries
                .extend_from_slice(&row[offset..][..head_dim]);
        }
        let HeadScratch {
            queries,
            scores,
            context,
            blocks,
        } = scratch;
        keys.apply_into(queries, blocks, scores, false);
        softmax_rows(scores, length, scale);
        values.apply_into(scores, blocks, context, false);
        out[..context.len()].copy_from_slice(context);
    }
    Ok(output)
}

/// `softmax(scale · row)` of each `width`-long row, in place.
fn softmax_rows(values: &mut [f32], width: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the function only needs AVX-512F, which was just detected.
        unsafe { softmax_rows_avx512(values, width, scale) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the function only needs AVX2 and FMA, which were just detected.
        unsafe { softmax_rows_avx2_fma(values, width, scale) };
        return;
    }
    softmax_rows_generic(values, width, scale);
}

/// The same arithmetic as the AVX2 version (no operation is fused or reordered, so the results
/// are bit-identical), its exponentials 16 to a register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_rows_avx512(values: &mut [f32], width: usize, scale: f32) {
    softmax_rows_generic(values, width, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2_fma(values: &mut [f32], width: usize, scale: f32) {
    softmax_rows_generic(values, width, scale);
}

/// Branch-free loops over contiguous memory, which the compiler vectorises: the max and the sum
/// are kept in [`LANES`] partial results (a single running `f32` sum is a chain the compiler
/// must not reorder), and the exponentials are a pass of their own.
#[inline(always)]
fn softmax_rows_generic(values: &mut [f32], width: usize, scale: f32) {
    for row in values.chunks_exact_mut(width) {
        let mut maxima = [f32::NEG_INFINITY; LANES];
        let (chunks, rest) = row.as_chunks::<LANES>();
        for chunk in chunks {
            for (max, &value) in maxima.iter_mut().zip(chunk) {
                *max = max.max(value);
            }
        }
        let max = rest
            .iter()
            .chain(&maxima)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        for value in row.iter_mut() {
            *value = exp_approx((*value - max) * scale);
        }
        let norm = 1.0 / lane_sum(row, |v| v);
        row.iter_mut().for_each(|value| *value *= norm);
    }
}

/// Partial results kept by [`softmax_rows_generic`]: one AVX register of f32.
const LANES: usize = 8;

/// `exp(x)` for `x ≤ 0` (softmax inputs after subtracting the max), branch-free so a loop over
/// it vectorises: `2ⁿ · p(r)` with `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, and `p` Cephes' degree-6
/// polynomial (relative error about 2e-7). Inputs below -87 are taken as -87 (about 2e-38, which
/// next to the max's weight of 1 is nothing).
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding and subtracting it rounds to an integer.
    let x = x.max(-87.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        p = p * r + coefficient;
    }
    let p = p * r * r + r + 1.0;
    // `2ⁿ` as an exponent-field increment: `rounded` carries `n` (|n| ≤ 126) in its low mantissa
    // bits, so its bits minus ROUND's are `n` in two's complement. Integer operations vectorise;
    // `n as i32` saturates, which compiled to a scalar conversion per lane (the softmax was 13 %
    // of a 512-token forward).
    let n_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(p.to_bits().wrapping_add(n_bits << 23))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_matches_std_exp() {
        for i in 0..=80_000 {
            let x = -(i as f32) / 1000.0;
            let (got, expected) = (exp_approx(x), x.exp());
            assert!(
                (got - expected).abs() <= 4e-7 * expected + 1e-38,
                "exp({x}): {got} vs {expected}"
            );
        }
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(-1e4) < 1e-37);
    }

    /// Attention written the plain way: the full score matrix, `f64`, std `exp`.
    fn reference_head(
        rows: &[f32],
        stride: usize,
        offset: usize,
        hidden: usize,
        d: usize,
        length: usize,
    ) -> Vec<f32> {
        let at = |i: usize, c: usize| rows[i * stride + c] as f64;
        let mut out = vec![0f32; rows.len() / stride * d];
        for i in 0..length {
            let scores: Vec<f64> = (0..length)
                .map(|j| {
                    (0..d)
                        .map(|c| at(i, offset + c) * at(j, offset + hidden + c))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                out[i * d + c] = ((0..length)
                    .map(|j| weights[j] * at(j, offset + 2 * hidden + c))
                    .sum::<f64>()
                    / total) as f32;
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_plain_formula_and_ignores_padding() {
        let (hidden, d) = (8, 4);
        let stride = 3 * hidden;
        // One scratch for every call, as on one thread; lengths past QUERY_BLOCK take several
        // query blocks, the last one partial.
        let mut scratch = HeadScratch::default();
        for (seq, length) in [(7, 1), (7, 4), (7, 7), (150, 64), (150, 65), (150, 140)] {
            let rows: Vec<f32> = (0..seq * stride)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 40.0)
                .collect();
            for offset in [0, d] {
                let got = attend_head(&rows, stride, offset, hidden, d, length, &mut scratch)
                    .expect("valid shapes");
                let expected = reference_head(&rows, stride, offset, hidden, d, length);
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (g - e).abs() < 1e-5,
                        "length {length}, offset {offset}: {g} vs {e}"
                    );
                }
                // The real rows do not depend on what the padding rows hold.
                let mut noisy = rows.clone();
                noisy[length * stride..].iter_mut().for_each(|v| *v = 1e3);
                let again = attend_head(&noisy, stride, offset, hidden, d, length, &mut scratch)
                    .expect("valid shapes");
                assert_eq!(got[..length * d], again[..length * d]);
            }
        }
    }

    #[test]
    fn every_softmax_path_gives_the_same_bits() {
        let (rows, width) = (5, 77);
        let values: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919 % 401) as f32 - 200.0) / 9.0)
            .collect();
        let mut dispatched = values.clone();
        softmax_rows(&mut dispatched, width, 0.3);
        let mut generic = values.clone();
        softmax_rows_generic(&mut generic, width, 0.3);
        assert_eq!(dispatched, generic);
        for row in dispatched.chunks_exact(width) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn residual_layer_norm_matches_the_formula() {
        let norm = Norm {
            gamma: vec![1.0, 2.0, 0.5, 1.0],
            beta: vec![0.0, 1.0, 0.0, -1.0],
            eps: 1e-12,
        };
        let mut rows = vec![1.0, 2.0, 3.0, 4.0];
        norm.add_and_normalize(&mut rows, &[1.0, 0.0, 1.0, 0.0]);
        // x = [2, 2, 4, 4]: mean 3, variance 1.
        assert_eq!(rows, vec![-1.0, -1.0, 0.5, 0.0]);
    }
}
