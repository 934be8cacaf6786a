//! The tokenizer, configured for routing: no padding, truncation at the bundle's length.
//!
//! BERT-style `tokenizer.json` files (BertNormalizer, BertPreTokenizer, WordPiece) get a fast path
//! for ASCII text, [`AsciiWordPiece`]: the same ids as the `tokenizers` pipeline, several times
//! faster, because that pipeline keeps per-byte alignments, offsets and token strings that routing
//! never reads. At one short prompt the `tokenizers` call costs more than the whole static tier
//! besides it. Any other text (non-ASCII, or containing an added token such as `[CLS]`) and any
//! other tokenizer go through `tokenizers` itself; a self-check at load compares both paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, ModelWrapper, Tokenizer, TruncationDirection, TruncationParams};

use crate::config::Truncation;

use crate::error::{CoreError, Result};

/// A `tokenizer.json` with padding turned off and truncation set, so that a prompt alone and inside
/// a batch become the same ids. (The all-MiniLM-L6-v2 file pads to 128 by default.)
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_tokens: usize,
    truncation: Truncation,
    add_special_tokens: bool,
    pad_id: u32,
    fast: Option<AsciiWordPiece>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("max_tokens", &self.max_tokens)
            .field("add_special_tokens", &self.add_special_tokens)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads `path`. `max_tokens` counts special tokens when `add_special_tokens` is set;
    /// `truncation` says which end of a longer prompt is kept.
    pub fn load(
        path: &Path,
        max_tokens: usize,
        truncation: Truncation,
        add_special_tokens: bool,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let mut inner = Tokenizer::from_bytes(&bytes).map_err(|e| CoreError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                direction: match truncation {
                    Truncation::Right => TruncationDirection::Right,
                    Truncation::Left => TruncationDirection::Left,
                },
                ..Default::default()
            }))
            .map_err(|e| CoreError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let pad_id = ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        let mut tokenizer = Self {
            inner,
            path: path.to_path_buf(),
            max_tokens,
            truncation,
            add_special_tokens,
            pad_id,
            fast: None,
        };
        tokenizer.fast = AsciiWordPiece::from_tokenizer(&tokenizer.inner)
            .filter(|fast| tokenizer.agrees_with(fast));
        Ok(tokenizer)
    }

    /// The token ids of one prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            Some(fast) if fast.handles(text) => Ok(fast.encode(
                text,
                self.add_special_tokens,
                self.max_tokens,
                self.truncation,
            )),
            _ => self.encode_with_tokenizers(text),
        }
    }

    /// The token ids of one prompt through the `tokenizers` pipeline, never the fast path (the
    /// reference the fast path is checked and benchmarked against).
    pub fn encode_with_tokenizers(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, self.add_special_tokens)
            .map_err(|e| CoreError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Whether ASCII prompts take the fast path (the file is a BERT WordPiece pipeline and the
    /// load-time self-check passed).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Encodes probe texts both ways, with and without special tokens, at this truncation.
    fn agrees_with(&self, fast: &AsciiWordPiece) -> bool {
        const PROBES: [&str; 4] = [
            "",
            "Hello, World! It's 3.14159 -- unaffable [x] (y)\tTABS\nnewlines\r\n  spaces.",
            "def f(x):\n    return x**2 # squares; see https://example.com/a_b?c=d&e=f",
            "supercalifragilisticexpialidocious antidisestablishmentarianism zzzzqqqq",
        ];
        PROBES.iter().all(|text| {
            [false, true].iter().all(|&special| {
                let slow = self
                    .inner
                    .encode(*text, special)
                    .map(|e| e.get_ids().to_vec());
                slow.is_ok_and(|ids| {
                    ids == fast.encode(text, special, self.max_tokens, self.truncation)
                })
            })
        })
    }

    /// The id used to pad batches.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The truncation length.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same tokenizer with or without special tokens (a static encoder averages word pieces
    /// only, as Model2Vec does; BERT needs `[CLS]` and `[SEP]`).
    pub fn with_special_tokens(mut self, add: bool) -> Self {
        self.add_special_tokens = add;
        self
    }
}

/// BERT's uncased (or cased) WordPiece tokenization of ASCII text, the same ids as `tokenizers`
/// gives for a `tokenizer.json` with BertNormalizer (clean_text on), BertPreTokenizer and a
/// WordPiece model: control bytes dropped, whitespace splits, each ASCII punctuation mark is a
/// word of its own, words are matched greedily longest-first against the vocabulary with the
/// continuation prefix. Accent stripping and Chinese-character handling do nothing to ASCII.
#[derive(Debug, Clone)]
struct AsciiWordPiece {
    vocab: HashMap<String, u32>,
    continuation_prefix: String,
    max_word_chars: usize,
    unk_id: u32,
    lowercase: bool,
    /// Added tokens (`[CLS]`, ...): `tokenizers` matches them in the raw text, so a text with one
    /// takes the slow path.
    added: Vec<String>,
    /// The post-processor's special tokens before and after the sequence.
    special_prefix: Vec<u32>,
    special_suffix: Vec<u32>,
}

impl AsciiWordPiece {
    /// The fast path for `tokenizer`, if its pipeline is the one this implements.
    fn from_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let lowercase = match tokenizer.get_normalizer()? {
            NormalizerWrapper::BertNormalizer(n) if n.clean_text => n.lowercase,
            _ => return None,
        };
        if !matches!(
            tokenizer.get_pre_tokenizer()?,
            PreTokenizerWrapper::BertPreTokenizer(_)
        ) {
            return None;
        }
        let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
            return None;
        };
        let vocab = model.get_vocab();
        let unk_id = *vocab.get(&model.unk_token)?;
        // The post-processor's specials: the ids around a one-word text.
        let plain = tokenizer.encode("a", false).ok()?.get_ids().to_vec();
        let special = tokenizer.encode("a", true).ok()?.get_ids().to_vec();
        let at = special
            .windows(plain.len())
            .position(|w| w == plain.as_slice())?;
        Some(Self {
            vocab,
            continuation_prefix: model.continuing_subword_prefix.clone(),
            max_word_chars: model.max_input_chars_per_word,
            unk_id,
            lowercase,
            added: tokenizer
                .get_added_tokens_decoder()
                .into_values()
                .map(|t| t.content)
                .collect(),
            special_prefix: special[..at].to_vec(),
            special_suffix: special[at + plain.len()..].to_vec(),
        })
    }

    /// Whether `text` can take this path.
    fn handles(&self, text: &str) -> bool {
        text.is_ascii() && !self.added.iter().any(|token| text.contains(token.as_str()))
    }

    /// The ids of ASCII `text`, truncated to `max_tokens` (special tokens included) at the
    /// `truncation` end, as `tokenizers` truncates.
    fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        max_tokens: usize,
        truncation: Truncation,
    ) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        let mut word = String::with_capacity(32);
        let mut scratch = String::with_capacity(32);
        for &byte in text.as_bytes() {
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' => self.push_word(&mut word, &mut scratch, &mut ids),
                // clean_text drops the other control characters without splitting the word.
                0x00..=0x1f | 0x7f => {}
                _ if byte.is_ascii_punctuation() => {
                    self.push_word(&mut word, &mut scratch, &mut ids);
                    word.push(byte as char);
                    self.push_word(&mut word, &mut scratch, &mut ids);
                }
                _ => word.push(if self.lowercase {
                    byte.to_ascii_lowercase()
                } else {
                    byte
                } as char),
            }
        }
        self.push_word(&mut word, &mut scratch, &mut ids);
        let specials = if add_special_tokens {
            self.special_prefix.len() + self.special_suffix.len()
        } else {
            0
        };
        let keep = max_tokens.saturating_sub(specials);
        if ids.len() > keep {
            match truncation {
                Truncation::Left => drop(ids.drain(..ids.len() - keep)),
                Truncation::Right => ids.truncate(keep),
            }
        }
        if add_special_tokens {
            ids.splice(0..0, self.special_prefix.iter().copied());
            ids.extend_from_slice(&self.special_suffix);
        }
        ids
    }

    /// Appends the word pieces of `word` (then clears it): greedy longest match, and the unknown
    /// token for the whole word when a piece is missing or the word is too long.
    fn push_word(&self, word: &mut String, scratch: &mut String, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let first = ids.len();
        if word.len() > self.max_word_chars {
            ids.push(self.unk_id);
            word.clear();
            return;
        }
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                if end == start {
                    break None;
                }
                let piece = if start == 0 {
                    &word[..end]
                } else {
                    scratch.clear();
                    scratch.push_str(&self.continuation_prefix);
                    scratch.push_str(&word[start..end]);
                    scratch.as_str()
                };
                if let Some(&id) = self.vocab.get(piece) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk_id);
                    break;
                }
            }
        }
        word.clear();
    }
}
