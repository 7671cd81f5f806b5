//! The model's tokenizer with its special tokens: BOS handling, EOS ids and
//! token strings for display.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// `[start, end)` bytes of a token in the text it came from.
pub type ByteRange = (usize, usize);

/// A `tokenizers::Tokenizer` with the ids the runtime needs.
pub struct ModelTokenizer {
    inner: Tokenizer,
    bos: Option<i64>,
    eos: Vec<i64>,
}

impl ModelTokenizer {
    pub fn new(inner: Tokenizer, bos: Option<i64>, eos: Vec<i64>) -> Self {
        ModelTokenizer { inner, bos, eos }
    }

    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path, bos: Option<i64>, eos: Vec<i64>) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::malformed(path, format!("not a tokenizer.json: {e}")))?;
        Ok(ModelTokenizer::new(inner, bos, eos))
    }

    pub fn bos_id(&self) -> Option<i64> {
        self.bos
    }

    pub fn eos_ids(&self) -> &[i64] {
        &self.eos
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with the BOS token first when `add_bos` and the
    /// model has one. Special-token strings in `text` map to their ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
            }
        }
        ids.extend(encoding.get_ids().iter().map(|&i| i as i64));
        Ok(ids)
    }

    /// [`ModelTokenizer::encode`] with each token's `[start, end)` byte range
    /// in `text` (`(0, 0)` for BOS).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_bos: bool,
    ) -> Result<(Vec<i64>, Vec<ByteRange>)> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        let mut offsets = Vec::with_capacity(encoding.len() + 1);
        if let (true, Some(bos)) = (add_bos, self.bos) {
            ids.push(bos);
            offsets.push((0, 0));
        }
        ids.extend(encoding.get_ids().iter().map(|&i| i as i64));
        offsets.extend_from_slice(encoding.get_offsets());
        Ok((ids, offsets))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, false)
            .map_err(|e| Error::Tokenizer(format!("cannot decode ids: {e}")))
    }

    /// The text one token stands for (byte-level tokens decoded).
    pub fn token_text(&self, id: i64) -> String {
        self.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The id of a token string in the vocabulary, e.g. `<|im_start|>`.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
