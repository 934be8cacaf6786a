//! [`CpuHead`]: the head's arithmetic on plain `f32` slices, for CPU inference.

use candle_core::DType;

use crate::head::Head;
use crate::packed::PackedLinear;

/// The same function as [`Head`] (ReLU hidden layers, sigmoid outputs) with each layer a
/// [`PackedLinear`]. At one prompt the head is two small matrix–vector products, and candle's
/// per-operation costs (a tensor per step, a thread-pool dispatch per matmul) took ~95 µs for
/// ~70 k multiply–adds; this takes a few µs. A prompt gets bit-identical scores alone and inside a
/// batch.
#[derive(Debug, Clone)]
pub struct CpuHead {
    layers: Vec<PackedLinear>,
    inputs: usize,
}

impl CpuHead {
    /// Packs the weights of `head` (any dtype, any device) for the CPU.
    pub fn from_head(head: &Head) -> candle_core::Result<Self> {
        let mut inputs = 0;
        let layers = head
            .layers()
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let weight = layer.weight().to_dtype(DType::F32)?;
                let (outputs, layer_inputs) = weight.dims2()?;
                if i == 0 {
                    inputs = layer_inputs;
                }
                let bias = match layer.bias() {
                    Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    None => vec![0.0; outputs],
                };
                PackedLinear::new(
                    &weight.flatten_all()?.to_vec1::<f32>()?,
                    &bias,
                    layer_inputs,
                    outputs,
                )
                .map_err(candle_core::Error::Msg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, inputs })
    }

    /// The number of inputs (the embedding dimension).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Predicted qualities in [0, 1] for `rows` embeddings of [`CpuHead::inputs`] values each,
    /// concatenated: `[rows, outputs]`, row-major.
    pub fn forward(&self, embeddings: &[f32]) -> Vec<f32> {
        let mut activations = self.forward_logits(embeddings);
        activations
            .iter_mut()
            .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
        activations
    }

    /// [`CpuHead::forward`] without the final sigmoid, as [`Head::forward_logits`] (what an
    /// output-length head reads: `ln(output tokens)`).
    pub fn forward_logits(&self, embeddings: &[f32]) -> Vec<f32> {
        match self.layers.split_first() {
            None => embeddings.to_vec(),
            Some((first, rest)) => {
                let mut activations = first.apply(embeddings);
                for layer in rest {
                    // ReLU on the hidden layer that feeds this one.
                    activations.iter_mut().for_each(|v| *v = v.max(0.0));
                    activations = layer.apply(&activations);
                }
                activations
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::config::HeadConfig;

    #[test]
    fn matches_the_candle_head() -> candle_core::Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let head = Head::load(
            vb,
            &HeadConfig {
                hidden: vec![37, 19],
            },
            21,
            5,
        )?;
        let cpu = CpuHead::from_head(&head)?;
        assert_eq!(cpu.inputs(), 21);
        let input: Vec<f32> = (0..21).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let expected = head
            .forward(&Tensor::from_vec(input.clone(), (1, 21), &Device::Cpu)?)?
            .to_vec2::<f32>()?;
        let got = cpu.forward(&input);
        assert_eq!(got.len(), 5);
        let twice = cpu.forward(&[input.clone(), input.clone()].concat());
        assert_eq!(
            twice,
            [got.clone(), got.clone()].concat(),
            "a row alone and in a batch"
        );
        for (g, e) in got.iter().zip(&expected[0]) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {:?}", expected[0]);
        }
        Ok(())
    }
}
