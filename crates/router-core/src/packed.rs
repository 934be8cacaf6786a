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
/// Panels computed by one task (and by one AVX-512 register block).
const PAIR: usize = 2;
/// Rows of a product computed together: their panel-major blocks (96 KiB per 384 outputs) and
/// input rows stay in the L2 cache until they are copied out, where a 512-row product's blocks
/// (3 MiB at 1,536 outputs) went out to memory and were read back row by row with a cache miss
/// per panel. Each panel is read once per chunk, which at 64 rows costs little.
const ROW_CHUNK: usize = 64;
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
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, String> {
        if inputs == 0 || weight.len() != inputs * outputs || bias.len() != outputs {
            return Err(format!(
                "a {outputs}×{inputs} linear layer needs {} weights and {outputs} biases, got {} and {}",
                inputs * outputs,
                weight.len(),
                bias.len()
            ));
        }
        Ok(Self::pack(inputs, outputs, bias, |output, input| {
            weight[output * inputs + input]
        }))
    }

    /// Without a bias, the weight's row `o` (`inputs` values) read straight from row `o` of a
    /// row-major matrix with `stride` columns, at column `offset`: attention's keys, one output
    /// per key, taken from the fused Q/K/V rows without copying them out first.
    pub(crate) fn from_rows(
        matrix: &[f32],
        stride: usize,
        offset: usize,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, String> {
        Self::check_in_bounds(matrix, stride, offset + inputs, outputs)?;
        Ok(Self::pack(inputs, outputs, &[], |output, input| {
            matrix[output * stride + offset + input]
        }))
    }

    /// Without a bias, the weight's column `i` (`outputs` values) read straight from row `i` of
    /// a row-major matrix with `stride` columns, at column `offset`: attention's values (the
    /// weight of `P·V` is their transpose), taken from the fused Q/K/V rows.
    pub(crate) fn from_columns(
        matrix: &[f32],
        stride: usize,
        offset: usize,
        inputs: usize,
        outputs: usize,
    ) -> Result<Self, String> {
        Self::check_in_bounds(matrix, stride, offset + outputs, inputs)?;
        Ok(Self::pack(inputs, outputs, &[], |output, input| {
            matrix[input * stride + offset + output]
        }))
    }

    /// Whether `rows` rows of a `stride`-wide `matrix` exist and hold `width` columns each.
    fn check_in_bounds(
        matrix: &[f32],
        stride: usize,
        width: usize,
        rows: usize,
    ) -> Result<(), String> {
        if rows == 0 || width > stride || matrix.len() < rows * stride {
            return Err(format!(
                "{rows} rows of {width} values do not fit a {}-value matrix with {stride} columns",
                matrix.len()
            ));
        }
        Ok(())
    }

    /// The weight `weight_at(output, input)` packed panel by panel, written in storage order;
    /// `bias` is zero-padded to whole panels (empty: no bias).
    fn pack(
        inputs: usize,
        outputs: usize,
        bias: &[f32],
        weight_at: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let panel_count = outputs.div_ceil(PANEL);
        let mut panels = Vec::with_capacity(panel_count * inputs * PANEL);
        for panel in 0..panel_count {
            let columns = panel * PANEL..outputs.min((panel + 1) * PANEL);
            for input in 0..inputs {
                panels.extend(columns.clone().map(|output| weight_at(output, input)));
                panels.resize(panels.len() + PANEL - columns.len(), 0.0);
            }
        }
        let mut padded_bias = vec![0f32; panel_count * PANEL];
        padded_bias[..bias.len()].copy_from_slice(bias);
        Self {
            panels,
            bias: padded_bias,
            inputs,
            outputs,
        }
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
        let mut output = Vec::new();
        self.apply_into(input, &mut Vec::new(), &mut output, true);
        output
    }

    /// As [`Self::apply`], into `output` (its contents replaced), with `blocks` as working memory
    /// for the panel-major blocks. A caller that keeps both from call to call allocates nothing
    /// once they have grown: large buffers freed and allocated again come back from the kernel
    /// as fresh pages it must clear (16 % of a 512-token forward before). `threads`: whether a
    /// large product may be split over rayon's threads (not when the caller's tasks already are).
    pub(crate) fn apply_into(
        &self,
        input: &[f32],
        blocks: &mut Vec<f32>,
        output: &mut Vec<f32>,
        threads: bool,
    ) {
        let rows = input.len() / self.inputs;
        if rows == 0 {
            output.clear();
            return;
        }
        // Every value is written below, so only a grown buffer's new part is zeroed.
        output.resize(rows * self.outputs, 0.0);
        blocks.resize(self.bias.len() * rows.min(ROW_CHUNK), 0.0);
        let split = threads && rows.min(ROW_CHUNK) * self.inputs * self.outputs >= PARALLEL_WORK;
        let chunks = input[..rows * self.inputs]
            .chunks(ROW_CHUNK * self.inputs)
            .zip(output.chunks_mut(ROW_CHUNK * self.outputs));
        for (input, output) in chunks {
            self.chunk_product(input, blocks, output, split);
        }
    }

    /// At most [`ROW_CHUNK`] rows of the product into `output` (`[rows, outputs]`): the
    /// panel-major blocks (`[panels][rows][PANEL]`, PAIR panels per task, over the threads when
    /// `split`), then copied row by row while they are still in the cache.
    fn chunk_product(&self, input: &[f32], blocks: &mut [f32], output: &mut [f32], split: bool) {
        let rows = input.len() / self.inputs;
        let blocks = &mut blocks[..self.bias.len() * rows];
        let tasks = blocks
            .chunks_mut(PAIR * rows * PANEL)
            .zip(self.panels.chunks(PAIR * self.inputs * PANEL))
            .zip(self.bias.chunks(PAIR * PANEL));
        let product = |((block, panels), bias): ((&mut [f32], &[f32]), &[f32])| {
            panels_product(input, self.inputs, panels, bias, block)
        };
        if split {
            tasks.collect::<Vec<_>>().into_par_iter().for_each(product);
        } else {
            tasks.for_each(product);
        }
        // Each row's panels in order, whole panels as fixed-size copies.
        for (row, values) in output.chunks_exact_mut(self.outputs).enumerate() {
            let (whole, rest) = values.as_chunks_mut::<PANEL>();
            let mut panel_rows = blocks
                .chunks_exact(rows * PANEL)
                .map(|block| &block[row * PANEL..][..PANEL]);
            for (values, block) in whole.iter_mut().zip(&mut panel_rows) {
                values.copy_from_slice(block);
            }
            if let Some(block) = panel_rows.next() {
                rest.copy_from_slice(&block[..rest.len()]);
            }
        }
    }
}

/// The values of a contiguous f32 CPU tensor, which the CPU custom ops (`op`) take; an error
/// naming the op for any other.
pub(crate) fn contiguous_f32<'s>(
    op: &str,
    storage: &'s CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'s [f32]> {
    let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("{op} takes a contiguous f32 tensor")
    };
    values
        .get(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} is out of its storage")))
}

/// As a candle op on a contiguous f32 CPU tensor `[.., inputs]` → `[.., outputs]`.
impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(self.name(), storage, layout)?;
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&self.inputs) {
            candle_core::bail!(
                "{}: input shape {dims:?} does not end in {}",
                self.name(),
                self.inputs
            )
        }
        if let Some(last) = dims.last_mut() {
            *last = self.outputs;
        }
        Ok((CpuStorage::F32(self.apply(input)), Shape::from(dims)))
    }
}

/// One or [`PAIR`] panels' blocks of the product (`block`: `[panels][rows][PANEL]`), with the
/// widest kernel the CPU has (checked at run time, so one binary serves every x86-64 machine).
/// The AVX-512 and the AVX2 + FMA kernels compute each output as `bias`, then one fused
/// multiply–add per input in input order, so they give bit-identical results (a test holds them
/// to each other).
fn panels_product(input: &[f32], inputs: usize, panels: &[f32], bias: &[f32], block: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        avx512::panels_product(input, inputs, panels, bias, block);
        return;
    }
    let rows = input.len() / inputs;
    let tasks = block
        .chunks_exact_mut(rows * PANEL)
        .zip(panels.chunks_exact(inputs * PANEL))
        .zip(bias.chunks_exact(PANEL));
    for ((block, panel), bias) in tasks {
        panel_product(input, rows, inputs, panel, bias, block);
    }
}

/// One panel's `[rows, PANEL]` block of the product, with fused multiply–adds when the CPU has
/// them.
fn panel_product(
    input: &[f32],
    rows: usize,
    inputs: usize,
    panel: &[f32],
    bias: &[f32],
    block: &mut [f32],
) {
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
fn panel_product_avx2_fma(
    input: &[f32],
    rows: usize,
    inputs: usize,
    panel: &[f32],
    bias: &[f32],
    block: &mut [f32],
) {
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
    let Ok(bias) = <&[f32; PANEL]>::try_from(bias) else {
        return;
    };
    let mut row = 0;
    while row + ROWS <= rows {
        rows_times_panel::<ROWS, FUSED>(
            &input[row * inputs..(row + ROWS) * inputs],
            panel,
            bias,
            &mut block[row * PANEL..(row + ROWS) * PANEL],
        );
        row += ROWS;
    }
    while row < rows {
        rows_times_panel::<1, FUSED>(
            &input[row * inputs..(row + 1) * inputs],
            panel,
            bias,
            &mut block[row * PANEL..(row + 1) * PANEL],
        );
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
                *sum = if FUSED {
                    x.mul_add(w, *sum)
                } else {
                    x * w + *sum
                };
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        block[r * PANEL..(r + 1) * PANEL].copy_from_slice(sums);
    }
}

/// The AVX-512 kernel: [`ROWS_512`] rows × two panels (16 of the 32 zmm registers hold partial
/// sums), so each weight vector loaded feeds eight multiply–adds.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PAIR, PANEL};

    /// Rows per register block.
    const ROWS_512: usize = 8;

    /// As [`super::panels_product`]; only call when `avx512f` was detected.
    pub(super) fn panels_product(
        input: &[f32],
        inputs: usize,
        panels: &[f32],
        bias: &[f32],
        block: &mut [f32],
    ) {
        let rows = input.len() / inputs;
        let panel_count = bias.len() / PANEL;
        // The kernel reads and writes through raw pointers; these checks make every access in
        // bounds: rows `row..row + R` of `input`, `panel_count` panels of `inputs × PANEL`, and
        // `panel_count` blocks of `rows × PANEL` in `block`.
        assert!((1..=PAIR).contains(&panel_count) && bias.len() == panel_count * PANEL);
        assert!(
            panels.len() == panel_count * inputs * PANEL
                && block.len() == panel_count * rows * PANEL
        );
        assert!(input.len() == rows * inputs);
        let mut row = 0;
        while row < rows {
            let step = (rows - row).min(ROWS_512);
            // SAFETY: avx512f was detected by the caller; the asserts above and `row + step <=
            // rows` keep every pointer in bounds.
            unsafe {
                match (step, panel_count) {
                    (8, 2) => kernel::<8, 2>(input, inputs, panels, bias, block, rows, row),
                    (8, _) => kernel::<8, 1>(input, inputs, panels, bias, block, rows, row),
                    (4..=7, 2) => kernel::<4, 2>(input, inputs, panels, bias, block, rows, row),
                    (4..=7, _) => kernel::<4, 1>(input, inputs, panels, bias, block, rows, row),
                    (_, 2) => kernel::<1, 2>(input, inputs, panels, bias, block, rows, row),
                    _ => kernel::<1, 1>(input, inputs, panels, bias, block, rows, row),
                }
            }
            row += match step {
                8 => 8,
                4..=7 => 4,
                _ => 1,
            };
        }
    }

    /// Rows `row..row + R` times `P` panels, plus the bias, into `block`.
    ///
    /// # Safety
    /// The CPU has avx512f; `input` holds `rows × inputs` values with `row + R <= rows`; `panels`
    /// holds `P × inputs × PANEL`, `bias` `P × PANEL` and `block` `P × rows × PANEL`.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize, const P: usize>(
        input: &[f32],
        inputs: usize,
        panels: &[f32],
        bias: &[f32],
        block: &mut [f32],
        rows: usize,
        row: usize,
    ) {
        let x = input.as_ptr().add(row * inputs);
        let w = panels.as_ptr();
        let initial: [__m512; P] =
            std::array::from_fn(|p| _mm512_loadu_ps(bias.as_ptr().add(p * PANEL)));
        let mut sums = [initial; R];
        for k in 0..inputs {
            let weights: [__m512; P] =
                std::array::from_fn(|p| _mm512_loadu_ps(w.add((p * inputs + k) * PANEL)));
            for (r, sums) in sums.iter_mut().enumerate() {
                let value = _mm512_set1_ps(*x.add(r * inputs + k));
                for (sum, weight) in sums.iter_mut().zip(&weights) {
                    *sum = _mm512_fmadd_ps(value, *weight, *sum);
                }
            }
        }
        let out = block.as_mut_ptr();
        for (r, sums) in sums.iter().enumerate() {
            for (p, sum) in sums.iter().enumerate() {
                _mm512_storeu_ps(out.add((p * rows + row + r) * PANEL), *sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        inputs: usize,
        outputs: usize,
    ) -> Vec<f32> {
        let rows = input.len() / inputs;
        let mut out = vec![0f32; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let dot: f64 = (0..inputs)
                    .map(|i| input[r * inputs + i] as f64 * weight[o * inputs + i] as f64)
                    .sum();
                out[r * outputs + o] = (dot + bias[o] as f64) as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 1000.0)
            .collect()
    }

    #[test]
    fn matches_a_plain_product_at_odd_shapes() {
        // Rows that leave remainders of ROWS, outputs that leave a partial panel, and sizes both
        // below and above the threshold for threads.
        for (rows, inputs, outputs) in [
            (1, 3, 1),
            (5, 17, 33),
            (7, 64, 16),
            (33, 384, 1152),
            (4, 1536, 40),
            (130, 40, 50),
        ] {
            let (weight, bias, input) = (
                values(inputs * outputs, 1),
                values(outputs, 2),
                values(rows * inputs, 3),
            );
            let packed = PackedLinear::new(&weight, &bias, inputs, outputs).expect("valid shapes");
            let got = packed.apply(&input);
            let expected = reference(&input, &weight, &bias, inputs, outputs);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{rows}×{inputs}×{outputs}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_a_batch() {
        let (inputs, outputs) = (384, 1536);
        let packed = PackedLinear::new(
            &values(inputs * outputs, 4),
            &values(outputs, 5),
            inputs,
            outputs,
        )
        .expect("valid");
        // Past ROW_CHUNK rows, so rows of a later chunk are checked too.
        let batch = values(70 * inputs, 6);
        let all = packed.apply(&batch);
        for row in [0, 1, 8, 63, 64, 65, 69] {
            let alone = packed.apply(&batch[row * inputs..(row + 1) * inputs]);
            assert_eq!(alone, all[row * outputs..(row + 1) * outputs], "row {row}");
        }
    }

    #[test]
    fn the_widest_kernel_is_bit_identical_to_the_fused_scalar_one() {
        // Rows that exercise every register block (8, 4, 1) and a pair and a lone panel.
        for (rows, inputs, panel_count) in [
            (1, 5, 1),
            (3, 17, 2),
            (7, 64, 2),
            (13, 384, 2),
            (29, 96, 1),
            (40, 33, 2),
        ] {
            let (panels, bias, input) = (
                values(panel_count * inputs * PANEL, 7),
                values(panel_count * PANEL, 8),
                values(rows * inputs, 9),
            );
            let mut widest = vec![0f32; panel_count * rows * PANEL];
            panels_product(&input, inputs, &panels, &bias, &mut widest);
            let mut scalar = vec![0f32; panel_count * rows * PANEL];
            for p in 0..panel_count {
                let panel = &panels[p * inputs * PANEL..(p + 1) * inputs * PANEL];
                let block = &mut scalar[p * rows * PANEL..(p + 1) * rows * PANEL];
                panel_product_generic::<true>(
                    &input,
                    rows,
                    inputs,
                    panel,
                    &bias[p * PANEL..(p + 1) * PANEL],
                    block,
                );
            }
            assert_eq!(
                widest, scalar,
                "{rows} rows × {inputs} inputs × {panel_count} panels"
            );
        }
    }

    #[test]
    fn packing_from_rows_or_columns_matches_packing_a_copied_weight() {
        let (rows, stride, offset, width) = (21, 40, 5, 19);
        let matrix = values(rows * stride, 10);
        let cell = |row: usize, column: usize| matrix[row * stride + offset + column];
        // One output per matrix row (keys) ...
        let copied: Vec<f32> = (0..rows)
            .flat_map(|row| (0..width).map(move |column| cell(row, column)))
            .collect();
        let by_rows = PackedLinear::from_rows(&matrix, stride, offset, width, rows).expect("fits");
        let expected = PackedLinear::new(&copied, &vec![0.0; rows], width, rows).expect("valid");
        assert_eq!(by_rows.panels, expected.panels);
        assert_eq!(by_rows.bias, expected.bias);
        // ... and one input per matrix row (values, transposed).
        let transposed: Vec<f32> = (0..width)
            .flat_map(|column| (0..rows).map(move |row| cell(row, column)))
            .collect();
        let by_columns =
            PackedLinear::from_columns(&matrix, stride, offset, rows, width).expect("fits");
        let expected =
            PackedLinear::new(&transposed, &vec![0.0; width], rows, width).expect("valid");
        assert_eq!(by_columns.panels, expected.panels);
        assert_eq!(by_columns.bias, expected.bias);
        // Columns or rows past the matrix are refused, not read out of bounds.
        assert!(PackedLinear::from_rows(&matrix, stride, 30, width, rows).is_err());
        assert!(PackedLinear::from_columns(&matrix, stride, offset, rows + 1, width).is_err());
    }

    #[test]
    fn reused_buffers_give_what_fresh_ones_give() {
        let (inputs, outputs) = (96, 200);
        let packed = PackedLinear::new(
            &values(inputs * outputs, 11),
            &values(outputs, 12),
            inputs,
            outputs,
        )
        .expect("valid");
        let (mut blocks, mut output) = (Vec::new(), Vec::new());
        // Larger, smaller, then larger again than the buffers were, on and off the threads.
        for (rows, threads) in [(70, true), (3, false), (9, true), (70, false), (0, true)] {
            let input = values(rows * inputs, rows);
            packed.apply_into(&input, &mut blocks, &mut output, threads);
            assert_eq!(output, packed.apply(&input), "{rows} rows");
        }
    }

    #[test]
    fn an_empty_input_gives_an_empty_output() {
        let packed = PackedLinear::new(&values(12, 1), &values(3, 2), 4, 3).expect("valid");
        assert!(packed.apply(&[]).is_empty());
    }

    #[test]
    fn rejects_mismatched_shapes() {
        assert!(PackedLinear::new(&[0.0; 6], &[0.0; 2], 4, 2).is_err());
        assert!(PackedLinear::new(&[0.0; 8], &[0.0; 3], 4, 2).is_err());
    }
}
