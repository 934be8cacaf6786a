//! Deriving a static encoder from a BERT encoder, as Model2Vec does.
//!
//! 1. Every vocabulary token `t` goes through the encoder alone, as `[CLS] t [SEP]`, and its
//!    mean-pooled, normalised output becomes its vector.
//! 2. PCA reduces the vectors to the chosen dimension (centred, projected on the top eigenvectors
//!    of the covariance). The eigenvectors come from a cyclic Jacobi solver written here: the
//!    matrix is at most `hidden × hidden` (384² for MiniLM), so a dense LAPACK dependency for
//!    one decomposition was not worth its build cost.
//! 3. Each row is weighted by a smooth inverse frequency of its token, `a / (a + p(t))` with
//!    `a = 1e-4` and `p` from Zipf's law over the token's rank. WordPiece vocabularies of BERT
//!    models list word pieces roughly by frequency, so the id is the rank. Frequent tokens
//!    ("the", "of") weigh little in a prompt's mean, rare ones much.
//!
//! Special tokens keep their rows but are never looked up: a static encoder tokenizes without them.

use candle_core::{DType, Device, Tensor};

use crate::encoder::{BertEncoder, StaticEncoder};
use crate::error::{CoreError, Result};

/// The SIF coefficient `a` of the frequency weights (Model2Vec's default).
pub const SIF_COEFFICIENT: f64 = 1e-4;

/// Tokens per forward pass while embedding the vocabulary.
const TOKENS_PER_BATCH: usize = 1024;

/// Derives a `dim`-dimensional static encoder from `bert`; `progress(done, total)` is called after
/// each batch of tokens.
pub fn distill_static(
    bert: &BertEncoder,
    dim: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StaticEncoder> {
    let tokenizer = bert.tokenizer();
    let vocab = tokenizer.vocab_size();
    if dim == 0 || dim > bert.dim() {
        return Err(CoreError::Invalid(format!(
            "static dimension {dim} must be in 1..={}",
            bert.dim()
        )));
    }
    let specials: Vec<u32> = ["[CLS]", "[SEP]"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    let (cls, sep) = match specials.as_slice() {
        [cls, sep] => (Some(*cls), Some(*sep)),
        _ => (None, None),
    };
    let mut vectors = Vec::with_capacity(vocab * bert.dim());
    let ids: Vec<u32> = (0..vocab as u32).collect();
    for chunk in ids.chunks(TOKENS_PER_BATCH) {
        let batch: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&id| cls.into_iter().chain([id]).chain(sep).collect())
            .collect();
        for row in bert.embed_ids(&batch)? {
            vectors.extend(row);
        }
        progress(vectors.len() / bert.dim(), vocab);
    }
    let mut table = pca(&vectors, bert.dim(), dim)?;
    apply_sif_weights(&mut table, dim);
    StaticEncoder::from_table(table, dim, tokenizer.clone())
}

/// Projects the rows of `data` (`n × width`) on their top `dim` principal components.
pub fn pca(data: &[f32], width: usize, dim: usize) -> Result<Vec<f32>> {
    let rows = data.len().checked_div(width).unwrap_or(0);
    if rows < 2 || dim > width {
        return Err(CoreError::Invalid(format!(
            "PCA of {rows} rows of width {width} to {dim} dimensions"
        )));
    }
    let x = Tensor::from_slice(data, (rows, width), &Device::Cpu)?.to_dtype(DType::F64)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let covariance = (centred.t()?.matmul(&centred)? / (rows as f64 - 1.0))?;
    let (values, vectors) = symmetric_eigen(&covariance.to_vec2::<f64>()?);
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    // The projection matrix: the top `dim` eigenvectors as columns, `width × dim`.
    let projection: Vec<f64> = (0..width)
        .flat_map(|r| order[..dim].iter().map(move |&c| (r, c)))
        .map(|(r, c)| vectors[r][c])
        .collect();
    let projection = Tensor::from_vec(projection, (width, dim), &Device::Cpu)?;
    Ok(centred
        .matmul(&projection)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Multiplies row `r` by `a / (a + p(r))`, `p(r) ∝ 1 / (r + 2)` (Zipf), `a` = [`SIF_COEFFICIENT`].
fn apply_sif_weights(table: &mut [f32], dim: usize) {
    let rows = table.len() / dim;
    let harmonic: f64 = (0..rows).map(|r| 1.0 / (r as f64 + 2.0)).sum();
    for (r, row) in table.chunks_mut(dim).enumerate() {
        let p = 1.0 / (r as f64 + 2.0) / harmonic;
        let weight = (SIF_COEFFICIENT / (SIF_COEFFICIENT + p)) as f32;
        row.iter_mut().for_each(|v| *v *= weight);
    }
}

/// Eigenvalues and eigenvectors (as columns of the returned matrix) of a symmetric matrix, by cyclic
/// Jacobi rotations.
pub fn symmetric_eigen(matrix: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = matrix.len();
    let mut a: Vec<Vec<f64>> = matrix.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let scale: f64 = a
        .iter()
        .flatten()
        .map(|x| x * x)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off <= scale * 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.4.1).
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                // Rows p and q change together, so this one indexes by column.
                #[allow(clippy::needless_range_loop)]
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_known_eigenpairs() {
        // [[2, 1], [1, 2]] has eigenvalues 3 (vector [1, 1]/√2) and 1 (vector [1, -1]/√2).
        let (values, vectors) = symmetric_eigen(&[vec![2.0, 1.0], vec![1.0, 2.0]]);
        let mut pairs: Vec<(f64, f64, f64)> = (0..2)
            .map(|c| (values[c], vectors[0][c], vectors[1][c]))
            .collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert!((pairs[0].0 - 3.0).abs() < 1e-12 && (pairs[1].0 - 1.0).abs() < 1e-12);
        assert!(
            (pairs[0].1 - pairs[0].2).abs() < 1e-12,
            "top eigenvector is ±[1, 1]/√2"
        );
        assert!(
            (pairs[1].1 + pairs[1].2).abs() < 1e-12,
            "second eigenvector is ±[1, -1]/√2"
        );
    }

    #[test]
    fn pca_keeps_the_direction_of_largest_variance() {
        // Points along [1, 1] with a little noise across: one component must carry the spread.
        let data: Vec<f32> = (0..50)
            .flat_map(|i| {
                let t = i as f32 - 25.0;
                let noise = if i % 2 == 0 { 0.1 } else { -0.1 };
                [t + noise, t - noise]
            })
            .collect();
        let projected = pca(&data, 2, 1).expect("pca");
        assert_eq!(projected.len(), 50);
        // Centred, each point is (t + 0.5)·[1, 1] ± noise·[1, -1]: its coordinate on the principal
        // axis [1, 1]/√2 is exactly ±√2·(t + 0.5), the noise cancelling.
        let sign = projected[49].signum();
        for (i, value) in projected.iter().enumerate() {
            let expected = sign * 2f32.sqrt() * (i as f32 - 25.0 + 0.5);
            assert!(
                (value - expected).abs() < 1e-4,
                "row {i}: {value} vs {expected}"
            );
        }
    }
}
