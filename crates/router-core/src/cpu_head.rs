//! [`CpuHead`]: the head's arithmetic on plain `f32` slices, for CPU inference.

use candle_core::DType;

use crate::head::Head;

/// The same function as [`Head`] (ReLU hidden layers, sigmoid outputs) on plain row-major `f32`
/// weights. At one prompt the head is two small matrix–vector products, and candle's per-operation
/// costs (a tensor per step, a thread-pool dispatch per matmul) took ~95 µs for ~70 k
/// multiply–adds; this takes a few µs. Each row is computed on its own, so a prompt gets
/// bit-identical scores alone and inside a batch.
#[derive(Debug, Clone)]
pub struct CpuHead {
    layers: Vec<DenseLayer>,
}

#[derive(Debug, Clone)]
struct DenseLayer {
    /// `[outputs, inputs]`, row-major: each output is one contiguous dot product.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl CpuHead {
    /// Copies the weights of `head` (any dtype, any device) into plain `f32` rows.
    pub fn from_head(head: &Head) -> candle_core::Result<Self> {
        let layers = head
            .layers()
            .iter()
            .map(|layer| {
                let weight = layer.weight().to_dtype(DType::F32)?;
                let (outputs, inputs) = weight.dims2()?;
                let bias = match layer.bias() {
                    Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    None => vec![0.0; outputs],
                };
                Ok(DenseLayer { weight: weight.flatten_all()?.to_vec1::<f32>()?, bias, inputs })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The number of inputs (the embedding dimension).
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.inputs)
    }

    /// Predicted qualities in [0, 1] for one embedding of [`CpuHead::inputs`] values.
    pub fn forward(&self, embedding: &[f32]) -> Vec<f32> {
        let last = self.layers.len().saturating_sub(1);
        let mut activations = embedding.to_vec();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut next: Vec<f32> = layer
                .weight
                .chunks_exact(layer.inputs)
                .zip(&layer.bias)
                .map(|(row, bias)| dot(row, &activations) + bias)
                .collect();
            if i < last {
                next.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            activations = next;
        }
        activations.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
        activations
    }
}

/// A dot product with independent partial sums, which the compiler turns into SIMD lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut partial = [0f32; LANES];
    let split = a.len().min(b.len()) / LANES * LANES;
    for (x, y) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for lane in 0..LANES {
            partial[lane] += x[lane] * y[lane];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    partial.iter().sum::<f32>() + tail
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
        let head = Head::load(vb, &HeadConfig { hidden: vec![37, 19] }, 21, 5)?;
        let cpu = CpuHead::from_head(&head)?;
        assert_eq!(cpu.inputs(), 21);
        let input: Vec<f32> = (0..21).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let expected = head.forward(&Tensor::from_vec(input.clone(), (1, 21), &Device::Cpu)?)?.to_vec2::<f32>()?;
        let got = cpu.forward(&input);
        assert_eq!(got.len(), 5);
        for (g, e) in got.iter().zip(&expected[0]) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {:?}", expected[0]);
        }
        Ok(())
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b = vec![2.0f32; 37];
        assert_eq!(dot(&a, &b), (0..37).sum::<i32>() as f32 * 2.0);
    }
}
