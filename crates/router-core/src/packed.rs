//! [`PackedLinear`]: a linear layer for CPU inference whose weight is packed once, at load time,
//! into the layout its matrix product streams through.
//!
//! At routing sizes (one prompt, 8–128 tokens) a BERT linear layer multiplies a few rows by a
//! weight of up to 2.4 MB. A general GEMM (candle's, through the `gemm` crate) re-packs that
//! weight on every call, so each forward reads and writes all 42 MB of MiniLM's weights twice more
//! than it needs to, and at 32 tokens that traffic, not arithmetic, sets its speed. Here the weight
//! is stored as column panels of [`PANEL`] outputs (`[panels][inputs][PANEL]`): the product walks
//! each panel once from start to end, keeps [`ROWS`] × [`PANEL`] partial sums in registers, and
//! the panels are split over the rayon threads. Each output is summed in input order whatever the
//! number of rows, so a prompt gets bit-identical activations alone and inside a batch.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// Outputs per panel: two AVX2 registers of f32 per row.
const PANEL: usize = 16;
/// Rows computed together: 4 × 16 partial sums fill eight AVX2 registers.
const ROWS: usize = 4;
/// Below this many multiply–adds a product runs on the calling thread: handing work to another
/// thread costs more than it saves (measured: a 8 × 384 × 384 product is ~1.2 M).
const PARALLEL_WORK: usize = 1 << 20;

/// A linear layer `y = x Wᵀ + b` with `W` (`[outputs, inputs]`) packed for [`PackedLinear::apply`].
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// `[panels][inputs][PANEL]`; the last panel is padded with zero columns.
    panels: Vec<f32>,
    /// `[panels × PANEL]`, zero-padded like the panels.
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl PackedLinear {
    /// Packs `weight` (`[outputs, inputs]`, row-major, as in a PyTorch/candle `Linear`) and `bias`.
    pub fn new(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Result<Self, String> {
        if inputs == 0 || weight.len() != inputs * outputs || bias.len() != outputs {
            return Err(format!(
                "a {outputs}×{inputs} linear layer needs {} weights and {outputs} biases, got {} and {}",
                inputs * outputs,
                weight.len(),
                bias.len()
            ));
        }
        let panel_count = outputs.div_ceil(PANEL);
        let mut panels = vec![0f32; panel_count * inputs * PANEL];
        for (output, row) in weight.chunks_exact(inputs).enumerate() {
            let (panel, column) = (output / PANEL, output % PANEL);
            let base = panel * inputs * PANEL + column;
            for (input, &w) in row.iter().enumerate() {
                panels[base + input * PANEL] = w;
            }
        }
        let mut padded_bias = vec![0f32; panel_count * PANEL];
        padded_bias[..outputs].copy_from_slice(bias);
        Ok(Self { panels, bias: padded_bias, inputs, outputs })
    }

    /// `input` (`[rows, inputs]`, row-major) times the weight, plus the bias: `[rows, outputs]`.
    ///
    /// ```
    /// use router_core::PackedLinear;
    /// // y = [x0 + 2·x1, 3·x0 − x1] + [0.5, 0]
    /// let layer = PackedLinear::new(&[1.0, 2.0, 3.0, -1.0], &[0.5, 0.0], 2, 2)?;
    /// assert_eq!(layer.apply(&[1.0, 1.0, 2.0, 0.0]), vec![3.5, 2.0, 2.5, 6.0]);
    /// # Ok::<(), String>(())
    /// ```
    pub fn apply(&self, input: &[f32]) -> Vec<f32> {
        let rows = input.len() / self.inputs;
        let panel_len = self.inputs * PANEL;
        let product = |(panel, bias): (&[f32], &[f32])| {
            let mut block = vec![0f32; rows * PANEL];
            panel_product(input, rows, self.inputs, panel, bias, &mut block);
            block
        };
        let work = self.panels.chunks_exact(panel_len).zip(self.bias.chunks_exact(PANEL));
        let blocks: Vec<Vec<f32>> = if rows * self.inputs * self.outputs >= PARALLEL_WORK {
            work.collect::<Vec<_>>().into_par_iter().map(product).collect()
        } else {
            work.map(product).collect()
        };
        let mut output = vec![0f32; rows * self.outputs];
        for (panel, block) in blocks.iter().enumerate() {
            let start = panel * PANEL;
            let width = PANEL.min(self.outputs - start);
            for (row, values) in block.chunks_exact(PANEL).enumerate() {
                output[row * self.outputs + start..][..width].copy_from_slice(&values[..width]);
            }
        }
        output
    }
}

/// As a candle op on a contiguous f32 CPU tensor `[.., inputs]` → `[.., outputs]`.
impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("{} takes a contiguous f32 tensor", self.name())
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&self.inputs) {
            candle_core::bail!("{}: input shape {dims:?} does not end in {}", self.name(), self.inputs)
        }
        let input = values
            .get(start..end)
            .ok_or_else(|| candle_core::Error::Msg(format!("{} is out of its storage", self.name())))?;
        if let Some(last) = dims.last_mut() {
            *last = self.outputs;
        }
        Ok((CpuStorage::F32(self.apply(input)), Shape::from(dims)))
    }
}

/// One panel's `[rows, PANEL]` block of the product, with fused multiply–adds when the CPU has
/// them (checked at run time, so one binary serves every x86-64 machine).
fn panel_product(input: &[f32], rows: usize, inputs: usize, panel: &[f32], bias: &[f32], block: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the function only needs AVX2 and FMA, which were just detected.
        unsafe { panel_product_avx2_fma(input, rows, inputs, panel, bias, block) };
        return;
    }
    panel_product_generic::<false>(input, rows, inputs, panel, bias, block);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn panel_product_avx2_fma(input: &[f32], rows: usize, inputs: usize, panel: &[f32], bias: &[f32], block: &mut [f32]) {
    panel_product_generic::<true>(input, rows, inputs, panel, bias, block);
}

/// The block in [`ROWS`]-row steps, then the remaining rows one by one. `FUSED` selects
/// `mul_add`, which is one instruction with FMA and a slow library call without it.
#[inline(always)]
fn panel_product_generic<const FUSED: bool>(
    input: &[f32],
    rows: usize,
    inputs: usize,
    panel: &[f32],
    bias: &[f32],
    block: &mut [f32],
) {
    let (panel, _) = panel.as_chunks::<PANEL>();
    let Ok(bias) = <&[f32; PANEL]>::try_from(bias) else { return };
    let mut row = 0;
    while row + ROWS <= rows {
        rows_times_panel::<ROWS, FUSED>(&input[row * inputs..(row + ROWS) * inputs], panel, bias, &mut block[row * PANEL..(row + ROWS) * PANEL]);
        row += ROWS;
    }
    while row < rows {
        rows_times_panel::<1, FUSED>(&input[row * inputs..(row + 1) * inputs], panel, bias, &mut block[row * PANEL..(row + 1) * PANEL]);
        row += 1;
    }
}

/// `R` rows of the input (`[R, inputs]`) times one panel (`[inputs][PANEL]`), plus the bias.
#[inline(always)]
fn rows_times_panel<const R: usize, const FUSED: bool>(
    input: &[f32],
    panel: &[[f32; PANEL]],
    bias: &[f32; PANEL],
    block: &mut [f32],
) {
    let inputs = panel.len();
    let rows: [&[f32]; R] = std::array::from_fn(|r| &input[r * inputs..(r + 1) * inputs]);
    let mut sums = [*bias; R];
    for (k, weights) in panel.iter().enumerate() {
        for r in 0..R {
            let x = rows[r][k];
            for (sum, &w) in sums[r].iter_mut().zip(weights) {
                *sum = if FUSED { x.mul_add(w, *sum) } else { x * w + *sum };
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        block[r * PANEL..(r + 1) * PANEL].copy_from_slice(sums);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(input: &[f32], weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
        let rows = input.len() / inputs;
        let mut out = vec![0f32; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let dot: f64 = (0..inputs).map(|i| input[r * inputs + i] as f64 * weight[o * inputs + i] as f64).sum();
                out[r * outputs + o] = (dot + bias[o] as f64) as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 1000.0).collect()
    }

    #[test]
    fn matches_a_plain_product_at_odd_shapes() {
        // Rows that leave remainders of ROWS, outputs that leave a partial panel, and sizes both
        // below and above the threshold for threads.
        for (rows, inputs, outputs) in [(1, 3, 1), (5, 17, 33), (7, 64, 16), (33, 384, 1152), (4, 1536, 40)] {
            let (weight, bias, input) = (values(inputs * outputs, 1), values(outputs, 2), values(rows * inputs, 3));
            let packed = PackedLinear::new(&weight, &bias, inputs, outputs).expect("valid shapes");
            let got = packed.apply(&input);
            let expected = reference(&input, &weight, &bias, inputs, outputs);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{rows}×{inputs}×{outputs}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_a_batch() {
        let (inputs, outputs) = (384, 1536);
        let packed = PackedLinear::new(&values(inputs * outputs, 4), &values(outputs, 5), inputs, outputs).expect("valid");
        let batch = values(9 * inputs, 6);
        let all = packed.apply(&batch);
        for row in 0..9 {
            let alone = packed.apply(&batch[row * inputs..(row + 1) * inputs]);
            assert_eq!(alone, all[row * outputs..(row + 1) * outputs], "row {row}");
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        assert!(PackedLinear::new(&[0.0; 6], &[0.0; 2], 4, 2).is_err());
        assert!(PackedLinear::new(&[0.0; 8], &[0.0; 3], 4, 2).is_err());
    }
}
