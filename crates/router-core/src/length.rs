//! The output-length head: how many tokens each underlying model will write for a prompt.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::HeadConfig;
use crate::error::{CoreError, Result};
use crate::head::Head;

/// An MLP (linear when it has no hidden layers) over the same prompt embedding as the quality
/// head, predicting `ln(output tokens)` of each underlying model, in the bundle's model order.
/// Stored as its own file ([`crate::config::files::LENGTH_HEAD`]), so a bundle without it still
/// loads and the policy charges the catalog's expected output length instead.
#[derive(Debug, Clone)]
pub struct LengthHead {
    head: Head,
}

impl LengthHead {
    /// Loads (or, with a `VarMap`-backed builder, creates) the layers: `input_dim` inputs,
    /// `outputs` outputs; tensors are named as [`Head`]'s.
    pub fn load(
        vb: VarBuilder,
        config: &HeadConfig,
        input_dim: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            head: Head::load(vb, config, input_dim, outputs)?,
        })
    }

    /// The underlying MLP, whose outputs are `ln(output tokens)`.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Predicted output tokens (`exp` of the head's outputs), one row per embedding and one value
    /// per underlying model.
    pub fn predict(&self, embeddings: &[Vec<f32>], device: &Device) -> Result<Vec<Vec<f32>>> {
        let Some(dim) = embeddings.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        if embeddings.iter().any(|e| e.len() != dim) {
            return Err(CoreError::Invalid("embeddings of different lengths".into()));
        }
        let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (embeddings.len(), dim), device)?;
        Ok(self
            .head
            .forward_logits(&input)?
            .exp()?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }
}
