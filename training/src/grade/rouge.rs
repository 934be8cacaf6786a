//! ROUGE-L exactly as Google's `rouge_score` computes it: `RougeScorer(["rougeL"])`, its default
//! tokenizer, no stemmer.

/// `rouge_score`'s default tokenizer: the text lower-cased (Unicode rules), every character that
/// is not an ASCII `a-z` or `0-9` made a space, then split. Letters outside ASCII (Greek,
/// Cyrillic, CJK, and accented Latin letters such as `é`) are dropped, so `café` becomes `caf`
/// and a Greek sentence has no tokens at all.
///
/// ```
/// use router_training::grade::rouge_tokens;
/// assert_eq!(rouge_tokens("The Café's 3 cats!"), ["the", "caf", "s", "3", "cats"]);
/// assert!(rouge_tokens("Καλημέρα κόσμε").is_empty());
/// ```
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `rouge_l`: the F-measure (β = 1) of the longest common subsequence of tokens, as
/// `rouge_score`'s `RougeScorer(["rougeL"]).score(reference, output).fmeasure`: tokens from
/// [`rouge_tokens`], precision = LCS / output tokens, recall = LCS / reference tokens,
/// F = 2PR / (P + R). No common token, or a side without tokens, scores 0.
///
/// ```
/// use router_training::grade::rouge_l;
/// // LCS "the cat on the mat" = 5 of 6 words on each side.
/// assert!((rouge_l("The cat sat on the mat.", "the cat is on the mat") - 5.0 / 6.0).abs() < 1e-12);
/// ```
pub fn rouge_l(output: &str, reference: &str) -> f64 {
    let (a, b) = (rouge_tokens(output), rouge_tokens(reference));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time.
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for token in &a {
        for (j, other) in b.iter().enumerate() {
            current[j + 1] = if token == other {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let lcs = previous[b.len()] as f64;
    let (precision, recall) = (lcs / a.len() as f64, lcs / b.len() as f64);
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn rouge_l_hand_computed() {
        close(
            rouge_l("the cat sat on the mat", "the cat is on the mat"),
            5.0 / 6.0,
        );
        close(rouge_l("the cat", "the black cat sat"), 2.0 / 3.0);
        // Order matters: the LCS of these is 2 words.
        close(
            rouge_l("the gunman police killed", "police killed the gunman"),
            0.5,
        );
        close(rouge_l("The Cat, sat!", "the cat sat"), 1.0);
        close(rouge_l("dog", "the cat"), 0.0);
        close(rouge_l("", "the cat"), 0.0);
        // Non-ASCII letters are dropped, as rouge_score drops them: "naïve" is "na", "ve".
        close(rouge_l("naïve café", "na ve caf"), 1.0);
        close(rouge_l("Καλημέρα κόσμε", "Καλημέρα κόσμε"), 0.0);
    }
}
