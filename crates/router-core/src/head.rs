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
    pub fn load(
        vb: VarBuilder,
        config: &HeadConfig,
        input_dim: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
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

    /// The output logits `[batch, outputs]` (training fits these with a sigmoid cross-entropy).
    pub fn forward_logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self.layers.last() {
            Some(output) => output.forward(&self.forward_hidden(xs)?),
            None => Ok(xs.clone()),
        }
    }

    /// The activations that feed the output layer, `[batch, width]`: the last hidden layer after
    /// its ReLU, or the input itself for a linear head. The output logits are these times the
    /// output layer's weight rows plus its bias, one row per underlying model, which is what lets
    /// a model be added to a trained head by fitting one more row on frozen features.
    pub fn forward_hidden(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for layer in self.layers.iter().take(self.layers.len().saturating_sub(1)) {
            xs = layer.forward(&xs)?.relu()?;
        }
        Ok(xs)
    }

    /// The linear layers, the output layer last.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }
}

impl Module for Head {
    /// Predicted qualities in [0, 1], `[batch, outputs]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward_logits(xs)?)
    }
}
