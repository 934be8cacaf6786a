//! The head: an MLP from the embedding to one sigmoid output per underlying model.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::HeadConfig;

/// An MLP with ReLU hidden layers and a sigmoid output per underlying model.
///
/// Weights are named `layers.{i}.weight` / `layers.{i}.bias`, the last layer being the output.
#[derive(Debug, Clone)]
pub struct Head {
    layers: Vec<Linear>,
}

impl Head {
    /// Loads (or, with a `VarMap`-backed builder, creates) the layers for `input_dim` inputs and
    /// `outputs` outputs.
    pub fn load(vb: VarBuilder, config: &HeadConfig, input_dim: usize, outputs: usize) -> candle_core::Result<Self> {
        let widths: Vec<usize> = std::iter::once(input_dim)
            .chain(config.hidden.iter().copied())
            .chain(std::iter::once(outputs))
            .collect();
        let layers_vb = vb.pp("layers");
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], layers_vb.pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The linear layers, the output layer last.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }

    /// The output logits `[batch, outputs]` (training fits these with a sigmoid cross-entropy).
    pub fn forward_logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.layers.len().saturating_sub(1);
        let mut xs = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i < last {
                xs = xs.relu()?;
            }
        }
        Ok(xs)
    }
}

impl Module for Head {
    /// Predicted qualities in [0, 1], `[batch, outputs]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward_logits(xs)?)
    }
}
