//! Interventions in the form the fused decode step applies itself: a short
//! list of per-row edits at the residual-stream sites of a block
//! (`hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`, `hook_mlp_out`,
//! `hook_resid_post`), on the step's `[rows, d_model]` f32 host rows, and at
//! the attention heads' outputs (`attn.hook_z`, `[rows, n_heads · d_head]`). An
//! intervention that cannot say what it does as such edits keeps the libtorch
//! path for its block; correctness never depends on the fast path.

use std::sync::Arc;

use super::names::{BlockSite, HookPoint};

/// The weights of a [`RowProducts`] product: f32, or bf16 bits (then `x`
/// is taken in bf16 too, as the model's own bf16 products take it).
#[derive(Debug, Clone, Copy)]
pub enum ProductWeights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Matrix products for a [`RowFunction`]: `x [m, k] · Wᵀ → [m, n]` for
/// `W [n, k]`. The fused step shares them out among its threads, which is
/// why every thread must ask for the same products in the same order (they
/// do: each runs the same edits on the same rows).
pub trait RowProducts {
    fn product(&self, x: &[f32], m: usize, w: ProductWeights) -> Vec<f32>;
}

/// [`RowProducts`] computed in place, one dot product at a time.
pub struct PlainProducts;

impl RowProducts for PlainProducts {
    fn product(&self, x: &[f32], m: usize, w: ProductWeights) -> Vec<f32> {
        let k = (x.len() / m.max(1)).max(1);
        let widen = |b: u16| f32::from_bits(u32::from(b) << 16);
        let narrow = |v: f32| widen(half::bf16::from_f32(v).to_bits());
        let dot = |row: &[f32], j: usize| -> f32 {
            match w {
                ProductWeights::F32(w) => row.iter().zip(&w[j * k..]).map(|(a, b)| a * b).sum(),
                ProductWeights::Bf16(w) => row
                    .iter()
                    .zip(&w[j * k..])
                    .map(|(a, b)| narrow(*a) * widen(*b))
                    .sum(),
            }
        };
        let n = match w {
            ProductWeights::F32(w) => w.len() / k,
            ProductWeights::Bf16(w) => w.len() / k,
        };
        x.chunks_exact(k)
            .flat_map(|row| (0..n).map(move |j| dot(row, j)))
            .collect()
    }
}

/// An edit an intervention computes from the rows themselves (an SAE feature
/// clamp: encode each row, compare, add decoder rows), for edits that are no
/// fixed vector or factor. Every thread of the fused step calls it.
pub trait RowFunction: Send + Sync {
    /// Width of the rows it edits.
    fn width(&self) -> usize;

    /// The most outputs (`n`) of a product it asks for per row; the fused
    /// step sizes its buffers by it.
    fn product_width(&self) -> usize {
        0
    }

    /// Edits the rows of `rows [n, width]` whose flag in `selected` is set,
    /// in place. `round` stores a value in the model's precision; call it
    /// wherever the libtorch path stores a tensor in the activation's dtype.
    fn edit_rows(
        &self,
        rows: &mut [f32],
        selected: &[bool],
        round: &dyn Fn(f32) -> f32,
        products: &dyn RowProducts,
    );
}

/// A shared [`RowFunction`], equal only to itself.
#[derive(Clone)]
pub struct Computed(pub Arc<dyn RowFunction>);

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Computed(width {})", self.0.width())
    }
}

impl PartialEq for Computed {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One edit of every `[d_model]` row at a site.
#[derive(Debug, Clone, PartialEq)]
pub enum RowEdit {
    /// `row += v` (`v [d_model]`, stored in the model's precision first).
    Add(Vec<f32>),
    /// `row *= s` (`s` first stored in the model's precision, as libtorch
    /// converts the factor to the activation's dtype).
    Scale(f32),
    /// `row *= s[r % s.len()]` for the `r`-th row: a factor per position of
    /// the step (`[seq]`, the same in every sequence) or per row
    /// (`[batch·seq]`), each stored in the model's precision first.
    ScaleRows(Vec<f32>),
    /// `head *= s[h]` for each head `h` of a `[n_heads · d_head]` row.
    ScaleHeads(Vec<f32>),
    /// DynScalar: `row *= 1 + bias + weight · row / max(‖row‖, 1e-6)`,
    /// in f32 (`weight [d_model]`).
    DynScale { weight: Vec<f32>, bias: f32 },
    /// `edit` on the rows of the sequences flagged in `sequences` (one flag
    /// per sequence of the batch), the others left alone.
    ForSequences {
        sequences: Vec<bool>,
        edit: Box<RowEdit>,
    },
    /// `edits` in order, then `row = before + weight · (row − before)`, each
    /// step stored in the model's precision: a steer at a fraction (or a
    /// multiple) of its strength.
    Blend { weight: f32, edits: Vec<RowEdit> },
    /// Whatever the function does to each row.
    Computed(Computed),
}

impl RowEdit {
    /// Whether the edit fits the rows of a step of `batch` sequences, each
    /// `width` wide (its vectors are that wide, its row flags that many).
    pub fn fits(&self, width: usize, batch: usize) -> bool {
        match self {
            RowEdit::Add(v) | RowEdit::DynScale { weight: v, .. } => v.len() == width,
            RowEdit::Scale(_) => true,
            RowEdit::ScaleHeads(heads) => !heads.is_empty() && width.is_multiple_of(heads.len()),
            RowEdit::ScaleRows(factors) => !factors.is_empty(),
            RowEdit::ForSequences { sequences, edit } => {
                sequences.len() == batch && edit.fits(width, batch)
            }
            RowEdit::Blend { edits, .. } => edits.iter().all(|e| e.fits(width, batch)),
            RowEdit::Computed(f) => f.0.width() == width,
        }
    }

    /// Applies the edit to `rows [batch·seq, width]`, which it
    /// [fits](Self::fits); `round` stores each result in the model's
    /// precision (bf16 rounding, or nothing in f32).
    pub fn apply(
        &self,
        rows: &mut [f32],
        width: usize,
        round: impl Fn(f32) -> f32 + Copy,
        products: &dyn RowProducts,
    ) {
        let n_rows = rows.len() / width;
        // A row function takes all its rows at once (its products then read
        // each weight once for the whole step).
        let whole = match self {
            RowEdit::Computed(f) => Some((f, vec![true; n_rows])),
            RowEdit::ForSequences { sequences, edit } => match edit.as_ref() {
                RowEdit::Computed(f) => {
                    let seq = n_rows / sequences.len().max(1);
                    Some((f, (0..n_rows).map(|r| sequences[r / seq]).collect()))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((f, selected)) = whole {
            f.0.edit_rows(rows, &selected, &round, products);
            return;
        }
        for (r, row) in rows.chunks_exact_mut(width).enumerate() {
            self.apply_row(r, n_rows, row, round, products);
        }
    }

    /// The edit of row `r` of `n_rows`.
    fn apply_row(
        &self,
        r: usize,
        n_rows: usize,
        row: &mut [f32],
        round: impl Fn(f32) -> f32 + Copy,
        products: &dyn RowProducts,
    ) {
        let scale = |row: &mut [f32], s: f32| {
            let s = round(s);
            row.iter_mut().for_each(|x| *x = round(*x * s));
        };
        match self {
            RowEdit::Add(v) => {
                for (x, a) in row.iter_mut().zip(v) {
                    *x = round(*x + round(*a));
                }
            }
            RowEdit::Scale(s) => scale(row, *s),
            RowEdit::ScaleRows(factors) => scale(row, factors[r % factors.len()]),
            RowEdit::ScaleHeads(factors) => {
                let head_width = row.len() / factors.len();
                for (head, &s) in row.chunks_exact_mut(head_width).zip(factors) {
                    scale(head, s);
                }
            }
            RowEdit::DynScale { weight, bias } => {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                let dot: f32 = row.iter().zip(weight).map(|(x, w)| x / norm * w).sum();
                let s = dot + bias + 1.0;
                row.iter_mut().for_each(|x| *x = round(*x * s));
            }
            RowEdit::ForSequences { sequences, edit } => {
                let seq = n_rows / sequences.len();
                if sequences[r / seq] {
                    edit.apply_row(r, n_rows, row, round, products);
                }
            }
            RowEdit::Blend { weight, edits } => {
                let before = row.to_vec();
                for edit in edits {
                    edit.apply_row(r, n_rows, row, round, products);
                }
                for (x, b) in row.iter_mut().zip(before) {
                    *x = round(b + round(round(*x - b) * weight));
                }
            }
            RowEdit::Computed(f) => f.0.edit_rows(row, &[true], &round, products),
        }
    }
}

/// The sites of a block the fused step can edit, in forward order.
pub const FUSED_SITES: [BlockSite; 6] = [
    BlockSite::ResidPre,
    BlockSite::AttnZ,
    BlockSite::AttnOut,
    BlockSite::ResidMid,
    BlockSite::MlpOut,
    BlockSite::ResidPost,
];

/// The edits of one block, per site of [`FUSED_SITES`] (empty: none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockEdits {
    pub sites: [Vec<RowEdit>; 6],
}

impl BlockEdits {
    /// The widest product per row that the block's row functions ask for.
    pub fn product_width(&self) -> usize {
        fn of(edit: &RowEdit) -> usize {
            match edit {
                RowEdit::Computed(f) => f.0.product_width(),
                RowEdit::ForSequences { edit, .. } => of(edit),
                RowEdit::Blend { edits, .. } => edits.iter().map(of).max().unwrap_or(0),
                _ => 0,
            }
        }
        self.sites.iter().flatten().map(of).max().unwrap_or(0)
    }

    /// Whether the block is edited at all.
    pub fn is_empty(&self) -> bool {
        self.sites.iter().all(Vec::is_empty)
    }

    /// The edits at `site` (none for a site outside [`FUSED_SITES`]).
    pub fn at(&self, site: BlockSite) -> &[RowEdit] {
        FUSED_SITES
            .iter()
            .position(|s| *s == site)
            .map_or(&[], |i| &self.sites[i])
    }

    /// Whether every edit fits the rows of a step of `batch` sequences:
    /// `z_width` wide at `attn.hook_z`, `d_model` wide elsewhere.
    pub fn fit(&self, (d_model, z_width): (usize, usize), batch: usize) -> bool {
        FUSED_SITES.iter().zip(&self.sites).all(|(site, edits)| {
            let width = if *site == BlockSite::AttnZ {
                z_width
            } else {
                d_model
            };
            edits.iter().all(|e| e.fits(width, batch))
        })
    }

    /// Applies the edits at `site` to `rows [n, width]`, in order.
    pub fn apply(
        &self,
        site: BlockSite,
        rows: &mut [f32],
        width: usize,
        round: impl Fn(f32) -> f32 + Copy,
        products: &dyn RowProducts,
    ) {
        for edit in self.at(site) {
            edit.apply(rows, width, round, products);
        }
    }

    /// Where each site's edits go: `hook` of block `layer`, in [`FUSED_SITES`] order.
    pub fn hooks(layer: usize) -> impl Iterator<Item = HookPoint> {
        FUSED_SITES
            .into_iter()
            .map(move |s| HookPoint::Block(layer, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_add_and_scale_every_row_in_order() {
        let mut edits = BlockEdits::default();
        edits.sites[2] = vec![RowEdit::Add(vec![1.0, -1.0]), RowEdit::Scale(2.0)];
        let mut rows = vec![0.5, 0.5, 2.0, 3.0];
        edits.apply(BlockSite::AttnOut, &mut rows, 2, |x| x, &PlainProducts);
        assert_eq!(rows, [3.0, -1.0, 6.0, 4.0]);
        // Other sites are untouched.
        edits.apply(BlockSite::MlpOut, &mut rows, 2, |x| x, &PlainProducts);
        assert_eq!(rows, [3.0, -1.0, 6.0, 4.0]);
        assert!(edits.at(BlockSite::AttnZ).is_empty() && edits.at(BlockSite::AttnQ).is_empty());
        assert_eq!(edits.at(BlockSite::AttnOut).len(), 2);
        assert!(!edits.is_empty() && BlockEdits::default().is_empty());
        // DynScalar: a row [3, 4] (unit [0.6, 0.8]) with weight [1, 0] and
        // bias 0.4 is scaled by 1 + 0.4 + 0.6 = 2.
        let mut row = vec![3.0, 4.0];
        let dyn_scale = RowEdit::DynScale {
            weight: vec![1.0, 0.0],
            bias: 0.4,
        };
        dyn_scale.apply(&mut row, 2, |x| x, &PlainProducts);
        assert!(
            (row[0] - 6.0).abs() < 1e-5 && (row[1] - 8.0).abs() < 1e-5,
            "{row:?}"
        );
        // A factor per position, repeated for every sequence of the step.
        let mut rows = vec![1.0; 8];
        RowEdit::ScaleRows(vec![2.0, 3.0]).apply(&mut rows, 2, |x| x, &PlainProducts);
        assert_eq!(rows, [2.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0, 3.0]);
        // Two heads of width 2.
        let mut z = vec![1.0; 4];
        RowEdit::ScaleHeads(vec![0.5, 4.0]).apply(&mut z, 4, |x| x, &PlainProducts);
        assert_eq!(z, [0.5, 0.5, 4.0, 4.0]);
        // Edits that do not fit the rows are found before the step.
        assert!(!RowEdit::Add(vec![1.0; 3]).fits(2, 1) && RowEdit::Scale(2.0).fits(2, 1));
        // Only the second of two sequences (two rows each) is edited.
        let second = RowEdit::ForSequences {
            sequences: vec![false, true],
            edit: Box::new(RowEdit::ScaleRows(vec![2.0, 3.0])),
        };
        let mut rows = vec![1.0; 4];
        second.apply(&mut rows, 1, |x| x, &PlainProducts);
        assert_eq!(rows, [1.0, 1.0, 2.0, 3.0]);
        assert!(second.fits(1, 2) && !second.fits(1, 3));
        // Half of an addition, then of a doubling: 1 + 0.5·(3 − 1), and
        // 2 + 0.5·(4 − 2).
        let half = RowEdit::Blend {
            weight: 0.5,
            edits: vec![RowEdit::Add(vec![2.0]), RowEdit::Scale(2.0)],
        };
        let mut rows = vec![1.0];
        half.apply(&mut rows, 1, |x| x, &PlainProducts);
        assert_eq!(rows, [3.5]);
    }
}
