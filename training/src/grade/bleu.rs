//! Sentence BLEU exactly as sacreBLEU's `sentence_bleu` computes it with its defaults: the `13a`
//! tokenizer, 4-grams, `exp` smoothing and effective order.

use std::sync::OnceLock;

use regex::Regex;
use rustc_hash::FxHashMap;

/// The highest n-gram order.
const MAX_ORDER: usize = 4;

/// Python's `str.isspace()`: Unicode white space plus the four ASCII separators U+001C–U+001F,
/// which Rust's `char::is_whitespace` does not count. sacreBLEU splits with `str.split()`.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// The four substitutions of sacreBLEU's `TokenizerRegexp`, in its order, with its patterns.
fn substitutions() -> &'static [(Regex, &'static str); 4] {
    static RULES: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    RULES.get_or_init(|| {
        // The patterns are constants: they compile or the build's tests fail.
        let compile = |pattern: &str| {
            Regex::new(pattern).unwrap_or_else(|e| panic!("13a pattern {pattern:?}: {e}"))
        };
        [
            // Punctuation and symbols of ASCII: `{|}~ [\]^_\` space!"#$%& ()*+ :;<=>?@ /`.
            (compile(r"([{-~\[-` -&(-+:-@/])"), " ${1} "),
            // Period and comma, unless preceded by a digit.
            (compile(r"([^0-9])([.,])"), "${1} ${2} "),
            // Period and comma, unless followed by a digit.
            (compile(r"([.,])([^0-9])"), " ${1} ${2}"),
            // A dash after a digit.
            (compile(r"([0-9])(-)"), "${1} ${2} "),
        ]
    })
}

/// sacreBLEU's `13a` tokenization of one segment (after its `rstrip()`), as the list of tokens:
/// `<skipped>` removed, `-` + newline joined, newlines made spaces, `&quot;` `&amp;` `&lt;`
/// `&gt;` decoded, then the four substitutions, then split on white space. Non-ASCII punctuation
/// is left inside words, as sacreBLEU leaves it.
///
/// ```
/// use router_training::grade::tokenize_13a;
/// assert_eq!(tokenize_13a("A 3-year-old doesn't pay $1,000.50!"), ["A", "3", "-", "year-old", "doesn't", "pay", "$", "1,000.50", "!"]);
/// assert_eq!(tokenize_13a("&quot;well-\nknown&quot;"), ["\"", "wellknown", "\""]);
/// assert_eq!(tokenize_13a("Καλημέρα, κόσμε·"), ["Καλημέρα", ",", "κόσμε·"]);
/// ```
pub fn tokenize_13a(text: &str) -> Vec<String> {
    let mut line = text
        .trim_end_matches(is_python_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (pattern, replacement) in substitutions() {
        line = pattern.replace_all(&line, *replacement).into_owned();
    }
    line.split(is_python_space)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Each token's id in `ids` (a new id for a new token): n-grams of `u32` hash fast.
fn token_ids<'t>(ids: &mut FxHashMap<&'t str, u32>, tokens: &'t [String]) -> Vec<u32> {
    tokens
        .iter()
        .map(|token| {
            let next = ids.len() as u32;
            *ids.entry(token.as_str()).or_insert(next)
        })
        .collect()
}

fn ngram_counts(tokens: &[u32], n: usize) -> FxHashMap<&[u32], usize> {
    let mut counts = FxHashMap::default();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// `bleu`: sentence BLEU of `output` against one `reference`, as sacreBLEU's `sentence_bleu`
/// computes it with its defaults (scaled from 0–100 to 0–1):
///
/// - tokens: the `13a` tokenizer ([`tokenize_13a`]), case kept;
/// - clipped n-gram precisions for n = 1..4;
/// - *effective order*: orders the output is too short to have are left out of the geometric
///   mean, so a short exact answer can score 1;
/// - *exp smoothing* (mteval's): the k-th order with no match counts `1 / (2^k × total_n)`;
/// - brevity penalty `exp(1 − r / c)` when the output (c tokens) is shorter than the reference (r);
/// - no matching n-gram at all, or an empty output, scores 0.
///
/// ```
/// use router_training::grade::bleu;
/// // p = 5/6, 3/5, 1/4 and, smoothed, 1/(2·3): the geometric mean is 48^(-1/4).
/// let score = bleu("the cat sat on the mat", "the cat is on the mat");
/// assert!((score - 48f64.powf(-0.25)).abs() < 1e-12);
/// assert_eq!(bleu("the cat", "the cat"), 1.0);
/// ```
pub fn bleu(output: &str, reference: &str) -> f64 {
    let (hyp_tokens, ref_tokens) = (tokenize_13a(output), tokenize_13a(reference));
    let mut ids = FxHashMap::default();
    let (hyp, reference) = (
        token_ids(&mut ids, &hyp_tokens),
        token_ids(&mut ids, &ref_tokens),
    );
    let (sys_len, ref_len) = (hyp.len() as f64, reference.len() as f64);
    let mut correct = [0usize; MAX_ORDER];
    let mut total = [0usize; MAX_ORDER];
    for n in 1..=MAX_ORDER {
        let ref_counts = ngram_counts(&reference, n);
        for (gram, count) in ngram_counts(&hyp, n) {
            correct[n - 1] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
            total[n - 1] += count;
        }
    }
    if correct.iter().all(|c| *c == 0) {
        return 0.0;
    }
    let brevity = if sys_len < ref_len {
        (1.0 - ref_len / sys_len).exp()
    } else {
        1.0
    };
    // sacreBLEU's loop, in its percent units, so the floating-point result is the same.
    let (mut log_sum, mut order, mut smooth) = (0.0, 0, 1.0);
    for n in 0..MAX_ORDER {
        if total[n] == 0 {
            break;
        }
        order = n + 1;
        let precision = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
        log_sum += precision.ln();
    }
    // sacreBLEU scores an exact match 100.00000000000004; a grade stays in [0, 1].
    (brevity * (log_sum / order as f64).exp() / 100.0).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn tokenizer_13a_keeps_what_sacrebleu_keeps() {
        let cases: [(&str, &[&str]); 9] = [
            ("don't stop", &["don't", "stop"]),
            ("a 3-year-old", &["a", "3", "-", "year-old"]),
            (
                "pi is 3.14, not 3,15.",
                &["pi", "is", "3.14", ",", "not", "3,15", "."],
            ),
            ("1,000 people", &["1,000", "people"]),
            ("Hello, world.", &["Hello", ",", "world", "."]),
            ("e.g. this", &["e", ".", "g", ".", "this"]),
            (
                "x <skipped> y&amp;z &lt;b&gt;",
                &["x", "y", "&", "z", "<", "b", ">"],
            ),
            ("end-\nof line\nnext", &["endof", "line", "next"]),
            (
                "日本語、テスト。 «quoted»",
                &["日本語、テスト。", "«quoted»"],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(tokenize_13a(text), expected, "{text:?}");
        }
        // rstrip first: a trailing "-\n" is not joined to anything.
        assert_eq!(tokenize_13a("well-\n"), ["well-"]);
        // Python's str.split() also splits at U+001C..U+001F.
        assert_eq!(tokenize_13a("a\u{1f}b"), ["a", "b"]);
    }

    #[test]
    fn bleu_hand_computed() {
        close(
            bleu("the cat sat on the mat", "the cat is on the mat"),
            (5.0 / 6.0 * 3.0 / 5.0 * 1.0 / 4.0 * 1.0 / 6.0f64).powf(0.25),
        );
        // Effective order 2 (two words), exact: BP = exp(1 - 6/2).
        close(bleu("the cat", "the cat sat on the mat"), (-2.0f64).exp());
        // p1 = 3/4 ("the" clipped to 1), p2 = 2/3, p3 = 1/2, p4: none of 1 -> 1/(2·1).
        close(
            bleu("the the cat sat", "the cat sat"),
            (0.75 * 2.0 / 3.0 * 0.5 * 0.5f64).powf(0.25),
        );
        // Two zero-match orders: the second is smoothed twice as hard.
        close(
            bleu("a b c d", "a x c y"),
            (0.5 * (1.0 / 6.0) * (1.0 / 8.0) * (1.0 / 8.0f64)).powf(0.25),
        );
        close(bleu("Paris.", "Paris ."), 1.0);
        close(bleu("paris", "Paris"), 0.0);
        close(bleu("", "Paris"), 0.0);
        close(bleu("Paris", ""), 0.0);
    }
}
