//! A BERT-family encoder in candle, written for CPU latency.
//!
//! The weights and their names are those of Hugging Face's `BertModel` (optionally under a `bert.`
//! prefix), so any BERT `config.json` + `model.safetensors` loads. What differs from the stock
//! candle-transformers forward, and why (see DESIGN.md, "Performance notes"):
//! - On the CPU (f32) the layers run on plain slices ([`crate::cpu_layer`]): linear weights packed
//!   once at load time into the panels of [`PackedLinear`], whose product streams each weight once
//!   per call (a general GEMM re-packs the weight on every call, which at routing sizes costs more
//!   than the arithmetic), attention over each prompt's real tokens only, and residual +
//!   layer norm in one pass.
//! - Elsewhere the layers are candle ops with weights stored pre-transposed (`[in, out]`) for
//!   candle's matmul; attention uses `softmax_last_dim`, and the additive mask is skipped when
//!   nothing is padded. The query is scaled before `Q·Kᵀ` (`n·d` multiplies instead of `n·n`).
//! - Q, K and V are one fused matmul: one pass over the activations instead of three.
//! - The exact (erf) GELU uses a branch-free rational approximation of erf that the compiler
//!   vectorises, instead of candle's scalar `libm::erff` per value (see [`gelu_erf`]).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::cpu_layer::{CpuLayer, LayerBuffers};
use crate::packed::contiguous_f32;

/// The activation of the feed-forward layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// The exact (erf) GELU.
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_approximate")]
    GeluNew,
    /// ReLU.
    Relu,
}

/// The part of a Hugging Face BERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: HiddenAct,
    /// Number of learned positions.
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Only `absolute` is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Checks the configuration for what this implementation supports.
    pub fn validate(&self) -> Result<(), String> {
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.type_vocab_size == 0 || self.max_position_embeddings == 0 {
            return Err("type_vocab_size and max_position_embeddings must be positive".into());
        }
        Ok(())
    }
}

/// A linear layer for candle's matmul on a non-CPU device: the weight stored transposed
/// (`[in, out]`) so the matmul reads it as is.
#[derive(Debug, Clone)]
struct DenseT {
    weight_t: Tensor,
    bias: Tensor,
}

impl DenseT {
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Self::from_weight(&weight, bias)
    }

    /// Several layers over the same input, concatenated along their outputs (fused Q/K/V).
    fn load_fused(vbs: &[VarBuilder], in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        let mut weights = Vec::with_capacity(vbs.len());
        let mut biases = Vec::with_capacity(vbs.len());
        for vb in vbs {
            weights.push(vb.get((out_dim, in_dim), "weight")?);
            biases.push(vb.get(out_dim, "bias")?);
        }
        Self::from_weight(&Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?)
    }

    fn from_weight(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }
}

impl Module for DenseT {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq, in_dim) = xs.dims3()?;
        let out_dim = self.weight_t.dim(1)?;
        xs.reshape((batch * seq, in_dim))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?
            .reshape((batch, seq, out_dim))
    }
}

#[derive(Debug, Clone)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type_zero: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let word = vb.get((cfg.vocab_size, cfg.hidden_size), "word_embeddings.weight")?;
        let position = vb.get(
            (cfg.max_position_embeddings, cfg.hidden_size),
            "position_embeddings.weight",
        )?;
        // Routing never uses a second segment, so only token type 0 is kept.
        let token_type_zero = vb
            .get(
                (cfg.type_vocab_size, cfg.hidden_size),
                "token_type_embeddings.weight",
            )?
            .narrow(0, 0, 1)?;
        let norm = candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?;
        Ok(Self {
            word,
            position,
            token_type_zero,
            norm,
        })
    }

    fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let hidden = self.word.dim(1)?;
        let words = self
            .word
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, hidden))?;
        let extra = (self.position.narrow(0, 0, seq)?
            + self.token_type_zero.broadcast_as((seq, hidden))?)?;
        self.norm.forward(&words.broadcast_add(&extra)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    qkv: DenseT,
    attention_out: DenseT,
    attention_norm: LayerNorm,
    intermediate: DenseT,
    output: DenseT,
    output_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let attention = vb.pp("attention");
        let self_attention = attention.pp("self");
        let qkv = DenseT::load_fused(
            &[
                self_attention.pp("query"),
                self_attention.pp("key"),
                self_attention.pp("value"),
            ],
            h,
            h,
        )?;
        let attention_out = DenseT::load(attention.pp("output").pp("dense"), h, h)?;
        let attention_norm = candle_nn::layer_norm(
            h,
            cfg.layer_norm_eps,
            attention.pp("output").pp("LayerNorm"),
        )?;
        let intermediate =
            DenseT::load(vb.pp("intermediate").pp("dense"), h, cfg.intermediate_size)?;
        let output = DenseT::load(vb.pp("output").pp("dense"), cfg.intermediate_size, h)?;
        let output_norm =
            candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?;
        Ok(Self {
            qkv,
            attention_out,
            attention_norm,
            intermediate,
            output,
            output_norm,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (batch, seq, hidden) = xs.dims3()?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((batch, seq, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?; // [3, batch, heads, seq, head_dim]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut scores = q.matmul(&k.t()?)?; // [batch, heads, seq, seq]
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + xs)?)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.act {
            HiddenAct::Gelu => gelu_erf(&inner)?,
            HiddenAct::GeluNew => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.output_norm
            .forward(&(self.output.forward(&inner)? + attended)?)
    }
}

/// The transformer layers, in the form for the device they run on.
#[derive(Debug, Clone)]
enum Layers {
    /// f32 on the CPU: plain slices and packed weights.
    Cpu(Vec<CpuLayer>),
    /// Any other device or dtype: candle ops.
    Candle(Vec<Layer>),
}

/// The BERT transformer: token ids to hidden states.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Layers,
    max_positions: usize,
}

impl BertModel {
    /// Loads the weights of a Hugging Face `BertModel` (at the root or under `bert.`).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let vb = if !vb.contains_tensor("embeddings.word_embeddings.weight")
            && vb.contains_tensor("bert.embeddings.word_embeddings.weight")
        {
            vb.pp("bert")
        } else {
            vb
        };
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let encoder = vb.pp("encoder").pp("layer");
        let layers = if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            Layers::Cpu(
                (0..cfg.num_hidden_layers)
                    .map(|i| CpuLayer::load(encoder.pp(i), cfg))
                    .collect::<candle_core::Result<_>>()?,
            )
        } else {
            Layers::Candle(
                (0..cfg.num_hidden_layers)
                    .map(|i| Layer::load(encoder.pp(i), cfg))
                    .collect::<candle_core::Result<_>>()?,
            )
        };
        Ok(Self {
            embeddings,
            layers,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// The number of positions the model has embeddings for.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` (u32).
    ///
    /// `lengths` gives each row's number of real tokens; rows shorter than `seq` are padding on the
    /// right and are masked out of attention. `None` means nothing is padded, and no mask is built.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        lengths: Option<&[usize]>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let mut hidden = self.embeddings.forward(input_ids)?;
        match &self.layers {
            Layers::Cpu(layers) => {
                let dims = hidden.dims().to_vec();
                let full = vec![seq; batch];
                let lengths = lengths.unwrap_or(&full);
                if lengths.len() != batch {
                    candle_core::bail!("{} lengths for a batch of {batch}", lengths.len())
                }
                let mut values = hidden.flatten_all()?.to_vec1::<f32>()?;
                LayerBuffers::with_kept(|buffers| {
                    layers
                        .iter()
                        .try_for_each(|layer| layer.forward(&mut values, seq, lengths, buffers))
                })?;
                hidden = Tensor::from_vec(values, dims, hidden.device())?;
            }
            Layers::Candle(layers) => {
                let mask = match lengths {
                    Some(lengths) if lengths.iter().any(|&l| l < seq) => {
                        Some(additive_mask(lengths, seq, input_ids.device())?)
                    }
                    _ => None,
                };
                for layer in layers {
                    hidden = layer.forward(&hidden, mask.as_ref())?;
                }
            }
        }
        Ok(hidden)
    }
}

/// The exact GELU, `x · (1 + erf(x / √2)) / 2`.
///
/// On CPU in f32 it is computed by [`GeluErfRational`]; candle's own `gelu_erf` calls the scalar
/// `libm::erff` per value, which at 32 tokens cost more than a tenth of the whole MiniLM forward.
/// Other devices and dtypes use candle's kernel.
pub fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?.apply_op1_no_bwd(&GeluErfRational)
    } else {
        xs.gelu_erf()
    }
}

/// The exact GELU over a contiguous f32 CPU tensor, with erf from [`erf_rational`].
struct GeluErfRational;

impl CustomOp1 for GeluErfRational {
    fn name(&self) -> &'static str {
        "gelu-erf-rational"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = contiguous_f32(self.name(), storage, layout)?;
        let output: Vec<f32> = values
            .iter()
            .map(|&x| 0.5 * x * (1.0 + erf_rational(x * std::f32::consts::FRAC_1_SQRT_2)))
            .collect();
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// erf in f32 as a rational function of `x` clamped to [-4, 4] (beyond which erf is ±1 in f32):
/// an odd degree-13 numerator over an even degree-8 denominator. These are Eigen's and XLA's
/// coefficients; the absolute error is below 1e-7 over the whole line. Having no branches and no
/// table lookups, the loop over a tensor vectorises.
// Plain multiply-adds rather than `f32::mul_add`: without the FMA target feature `mul_add` is a
// call to the software `fmaf`, which neither vectorises nor runs fast.
#[inline(always)]
pub(crate) fn erf_rational(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut numerator = -2.726_142_3e-10_f32;
    for coefficient in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        numerator = numerator * x2 + coefficient;
    }
    let mut denominator = -1.456_607_18e-5_f32;
    for coefficient in [
        -2.133_740_5e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_473_9e-2,
    ] {
        denominator = denominator * x2 + coefficient;
    }
    x * numerator / denominator
}

/// `[batch, 1, 1, seq]`: 0 for real tokens, a large negative number for padding, so that padded keys
/// get exactly zero attention after the softmax.
fn additive_mask(lengths: &[usize], seq: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..seq).map(move |i| if i < len { 0.0 } else { -1e9 }))
        .collect();
    Tensor::from_vec(values, (lengths.len(), 1, 1, seq), device)
}

/// Pools hidden states `[batch, seq, hidden]` into `[batch, hidden]`.
///
/// Mean pooling averages only each row's first `lengths[i]` tokens, so padding never changes a
/// prompt's embedding.
pub fn mean_pool(hidden: &Tensor, lengths: &[usize]) -> candle_core::Result<Tensor> {
    let (batch, seq, _) = hidden.dims3()?;
    if lengths.iter().all(|&l| l == seq) {
        return hidden.mean(1);
    }
    let weights: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| {
            (0..seq).map(move |i| {
                if i < len {
                    1.0 / len.max(1) as f32
                } else {
                    0.0
                }
            })
        })
        .collect();
    let weights = Tensor::from_vec(weights, (batch, seq, 1), hidden.device())?;
    hidden.broadcast_mul(&weights)?.sum(1)
}

/// Scales each row to unit L2 norm (a zero row stays zero).
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norms = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    xs.broadcast_div(&norms)
}

/// Token ids of one batch, right-padded to the longest row, as a `[batch, seq]` u32 tensor.
pub fn pad_batch(
    ids: &[Vec<u32>],
    pad_id: u32,
    device: &Device,
) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let seq = ids.iter().map(Vec::len).max().unwrap_or(0);
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let flat: Vec<u32> = ids
        .iter()
        .flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, seq - row.len()))
        })
        .collect();
    let tensor = Tensor::from_vec(flat, (ids.len(), seq), device)?;
    Ok((tensor.to_dtype(DType::U32)?, lengths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rational_gelu_matches_candles_libm_gelu() -> candle_core::Result<()> {
        // A dense grid over where GELU bends, plus the tails where erf saturates.
        let values: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let xs = Tensor::from_vec(values, (24_001,), &Device::Cpu)?;
        let ours = gelu_erf(&xs)?.to_vec1::<f32>()?;
        let candles = xs.gelu_erf()?.to_vec1::<f32>()?;
        let worst = ours
            .iter()
            .zip(&candles)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
        Ok(())
    }

    #[test]
    fn rational_gelu_keeps_shape_and_handles_strided_input() -> candle_core::Result<()> {
        let xs = Tensor::arange(0f32, 24.0, &Device::Cpu)?
            .affine(0.5, -6.0)?
            .reshape((4, 6))?
            .t()?;
        let ours = gelu_erf(&xs)?;
        assert_eq!(ours.dims(), &[6, 4]);
        let difference = (ours - xs.gelu_erf()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(difference < 1e-6, "{difference}");
        Ok(())
    }
}
