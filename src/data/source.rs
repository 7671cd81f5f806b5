//! What a trainer reads: batches of activation rows from any
//! [`ActivationSource`], whether a store on disk ([`crate::data::store::reader::StoreReader`])
//! or the model run on the fly ([`crate::data::harvest::stream::StreamingSource`]).

use tch::Tensor;

use crate::error::Result;

/// One batch of activation rows.
pub struct ActivationBatch {
    /// `[batch, d]`.
    pub acts: Tensor,
    /// `[batch]` int64 token ids of the rows, when asked for.
    pub tokens: Option<Tensor>,
}

/// A stream of activation batches.
pub trait ActivationSource {
    /// Width of one row.
    fn d(&self) -> usize;
    /// The next batch, or `None` when the source is exhausted.
    fn next_batch(&mut self) -> Result<Option<ActivationBatch>>;
}
