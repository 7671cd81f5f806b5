//! One shard file built batch by batch while the model runs.
//!
//! A shard's safetensors layout depends only on its row count, which is known
//! when the shard starts, so each batch's rows go straight to their place in
//! the file: they are written to `NAME.tmp` as they come and hashed as soon
//! as everything before them is there, and finishing only syncs and renames
//! the file (as [`crate::io::atomic::write_atomic`] does), so a crash or a full
//! disk never leaves a torn shard under its real name. A shard that ends short
//! (the corpus ran out) is laid out again for its real size. The bytes are
//! exactly those `safetensors::serialize` writes for the same tensors: the
//! header comes from it and the offsets from reading that header back.
//!
//! The shard's normalisation sums are gathered the same way, batch by batch,
//! by [`RowSums`], which comes to the same sums as for the whole shard at once.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::manifest::StoreDtype;
use super::row_sums::RowSums;
use crate::error::{Error, Result};
use crate::io::atomic::{sha256_hex, sync_dir, tmp_path, write_atomic};

/// Bytes written to a shard file between syncs, so that the sync that ends a
/// shard has little left to flush.
const SYNC_BYTES: usize = 8 << 20;

/// A finished shard: what its manifest entry and the store's statistics need.
#[derive(Debug, Clone)]
pub(crate) struct BuiltShard {
    /// File name inside the store folder.
    pub file: String,
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Sum over rows of each row's L2 norm.
    pub norm_sum: f64,
    /// `[d]` sum over rows.
    pub sum: Vec<f64>,
}

/// A tensor's dtype and shape without its data: enough for a header.
struct Shape {
    dtype: Dtype,
    shape: Vec<usize>,
}

impl View for &Shape {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone, Copy, Default)]
struct Section {
    start: usize,
    row_bytes: usize,
}

impl Section {
    /// The bytes of rows `at..at + n`.
    fn rows(self, at: usize, n: usize) -> std::ops::Range<usize> {
        self.start + at * self.row_bytes..self.start + (at + n) * self.row_bytes
    }
}

/// `NAME.tmp` being written, removed unless it was renamed to `NAME`.
struct TmpFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    unsynced: usize,
    renamed: bool,
}

impl TmpFile {
    fn create(path: &Path) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(TmpFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            unsynced: 0,
            renamed: false,
        })
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let tmp = &self.tmp;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::store(tmp, "shard file already closed"))?;
        file.seek(SeekFrom::Start(offset as u64))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| Error::io(tmp, e))?;
        self.unsynced += bytes.len();
        if self.unsynced >= SYNC_BYTES {
            file.sync_data().map_err(|e| Error::io(tmp, e))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Syncs the file, renames it to its real name and syncs the folder.
    fn commit(mut self) -> Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.renamed = true;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Builds shard files of one store, one at a time, reusing its buffers.
pub(crate) struct ShardBuilder {
    dtype: StoreDtype,
    d: usize,
    /// The whole file: header, then the tensors at their offsets.
    buf: Vec<u8>,
    header_len: usize,
    acts: Section,
    tokens: Section,
    positions: Section,
    /// The section that follows the header.
    first: Section,
    /// Rows the shard was started for, and rows pushed so far.
    rows: usize,
    filled: usize,
    hasher: Sha256,
    /// Bytes of `buf` hashed so far (a prefix of the file).
    hashed: usize,
    out: Option<TmpFile>,
    sums: RowSums,
}

impl ShardBuilder {
    pub(crate) fn new(dtype: StoreDtype, d: usize) -> Self {
        ShardBuilder {
            dtype,
            d,
            buf: Vec::new(),
            header_len: 0,
            acts: Section::default(),
            tokens: Section::default(),
            positions: Section::default(),
            first: Section::default(),
            rows: 0,
            filled: 0,
            hasher: Sha256::new(),
            hashed: 0,
            out: None,
            sums: RowSums::new(d),
        }
    }

    /// The header (with its length prefix) of a shard of `rows` rows.
    fn header(&self, rows: usize) -> Result<Vec<u8>> {
        let shapes = [
            (
                "acts",
                Shape {
                    dtype: self.dtype.safetensors(),
                    shape: vec![rows, self.d],
                },
            ),
            (
                "tokens",
                Shape {
                    dtype: Dtype::I32,
                    shape: vec![rows],
                },
            ),
            (
                "positions",
                Shape {
                    dtype: Dtype::I32,
                    shape: vec![rows],
                },
            ),
        ];
        safetensors::serialize(shapes.iter().map(|(name, shape)| (*name, shape)), None)
            .map_err(|e| Error::InvalidArgument(format!("cannot lay out a shard: {e}")))
    }

    /// Starts the shard file `path` of `rows` rows (abandoning any shard in
    /// progress).
    pub(crate) fn start(&mut self, path: &Path, rows: usize) -> Result<()> {
        self.abandon();
        let header = self.header(rows)?;
        let len = header.len() + rows * (self.d * self.dtype.bytes() + 8);
        if self.buf.len() != len {
            self.buf.clear();
            self.buf.resize(len, 0);
        }
        self.buf[..header.len()].copy_from_slice(&header);
        let bad = |e: safetensors::SafeTensorError| {
            Error::store(path, format!("cannot lay out the shard: {e}"))
        };
        let (_, metadata) = SafeTensors::read_metadata(&self.buf).map_err(bad)?;
        let section = |name: &str, row_bytes: usize| -> Result<Section> {
            let info = metadata
                .info(name)
                .ok_or_else(|| Error::store(path, format!("no `{name}` in the shard layout")))?;
            Ok(Section {
                start: header.len() + info.data_offsets.0,
                row_bytes,
            })
        };
        self.acts = section("acts", self.d * self.dtype.bytes())?;
        self.tokens = section("tokens", 4)?;
        self.positions = section("positions", 4)?;
        self.first = [self.acts, self.tokens, self.positions]
            .into_iter()
            .min_by_key(|s| s.start)
            .unwrap_or_default();
        self.header_len = header.len();
        self.rows = rows;
        self.filled = 0;
        self.hasher = Sha256::new();
        self.hashed = 0;
        self.sums.clear();
        let mut out = TmpFile::create(path)?;
        out.write_at(0, &header)?;
        self.out = Some(out);
        self.hash_ready();
        Ok(())
    }

    /// Hashes the bytes whose predecessors in the file are all there.
    fn hash_ready(&mut self) {
        let ready = if self.filled == self.rows {
            self.buf.len()
        } else {
            self.first.start + self.filled * self.first.row_bytes
        };
        if ready > self.hashed {
            self.hasher.update(&self.buf[self.hashed..ready]);
            self.hashed = ready;
        }
    }

    /// Adds rows: `acts [n, d]` on the CPU in the store's dtype, their token
    /// ids and positions.
    pub(crate) fn push(&mut self, acts: &Tensor, tokens: &[i32], positions: &[i32]) -> Result<()> {
        let n = tokens.len();
        let Some(out) = self.out.as_mut() else {
            return Err(Error::InvalidArgument(
                "rows pushed to a shard that was not started".into(),
            ));
        };
        if acts.size() != [n as i64, self.d as i64]
            || positions.len() != n
            || acts.kind() != self.dtype.kind()
            || acts.device() != Device::Cpu
        {
            return Err(Error::InvalidArgument(format!(
                "rows of {n} token ids, {} positions and {:?} activations {:?} on {:?}; the store \
                 expects [rows, {}] {:?} on the CPU",
                positions.len(),
                acts.kind(),
                acts.size(),
                acts.device(),
                self.d,
                self.dtype.kind()
            )));
        }
        if self.filled + n > self.rows {
            return Err(Error::InvalidArgument(format!(
                "{} rows pushed to a shard of {}",
                self.filled + n,
                self.rows
            )));
        }
        let at = self.filled;
        let acts = acts.f_contiguous()?;
        let range = self.acts.rows(at, n);
        acts.f_copy_data_u8(&mut self.buf[range.clone()], n * self.d)?;
        out.write_at(range.start, &self.buf[range])?;
        for (section, values) in [(self.tokens, tokens), (self.positions, positions)] {
            let range = section.rows(at, n);
            for (dst, v) in self.buf[range.clone()].chunks_exact_mut(4).zip(values) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            out.write_at(range.start, &self.buf[range])?;
        }
        self.sums.add(&acts)?;
        self.filled += n;
        self.hash_ready();
        Ok(())
    }

    /// Finishes the shard in progress with the rows pushed so far: the file
    /// is synced and renamed to its real name.
    pub(crate) fn finish(&mut self) -> Result<BuiltShard> {
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::InvalidArgument("no shard in progress".into()))?;
        let path = out.path.clone();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (norm_sum, sum) = (self.sums.norm_sum, self.sums.sum.clone());
        let (bytes, sha256) = if self.filled == self.rows {
            self.hash_ready();
            let digest = std::mem::replace(&mut self.hasher, Sha256::new()).finalize();
            out.commit()?;
            (
                self.buf.len(),
                digest.iter().map(|b| format!("{b:02x}")).collect(),
            )
        } else {
            drop(out);
            let bytes = self.serialize_filled(&path)?;
            write_atomic(&path, &bytes)?;
            (bytes.len(), sha256_hex(&bytes))
        };
        let rows = self.filled;
        self.filled = 0;
        Ok(BuiltShard {
            file,
            rows: rows as u64,
            bytes: bytes as u64,
            sha256,
            norm_sum,
            sum,
        })
    }

    /// The file of the rows pushed so far, laid out for their number.
    fn serialize_filled(&self, path: &Path) -> Result<Vec<u8>> {
        let n = self.filled;
        let bad = |e: safetensors::SafeTensorError| {
            Error::store(path, format!("cannot serialise shard: {e}"))
        };
        let views = vec![
            (
                "acts",
                TensorView::new(
                    self.dtype.safetensors(),
                    vec![n, self.d],
                    &self.buf[self.acts.rows(0, n)],
                )
                .map_err(bad)?,
            ),
            (
                "tokens",
                TensorView::new(Dtype::I32, vec![n], &self.buf[self.tokens.rows(0, n)])
                    .map_err(bad)?,
            ),
            (
                "positions",
                TensorView::new(Dtype::I32, vec![n], &self.buf[self.positions.rows(0, n)])
                    .map_err(bad)?,
            ),
        ];
        safetensors::serialize(views, None).map_err(bad)
    }

    /// Drops the shard in progress, if any, and its temporary file.
    pub(crate) fn abandon(&mut self) {
        self.out = None;
        self.filled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::store::manifest::NormStats;
    use tch::Kind;

    /// The bytes of a shard as `safetensors::serialize` writes them.
    fn serialized(dtype: StoreDtype, acts: &Tensor, tokens: &[i32], positions: &[i32]) -> Vec<u8> {
        let rows = tokens.len();
        let d = acts.size()[1] as usize;
        let mut act_bytes = vec![0u8; rows * d * dtype.bytes()];
        acts.copy_data_u8(&mut act_bytes, rows * d);
        let token_bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let position_bytes: Vec<u8> = positions.iter().flat_map(|t| t.to_le_bytes()).collect();
        safetensors::serialize(
            vec![
                (
                    "acts",
                    TensorView::new(dtype.safetensors(), vec![rows, d], &act_bytes).unwrap(),
                ),
                (
                    "tokens",
                    TensorView::new(Dtype::I32, vec![rows], &token_bytes).unwrap(),
                ),
                (
                    "positions",
                    TensorView::new(Dtype::I32, vec![rows], &position_bytes).unwrap(),
                ),
            ],
            None,
        )
        .unwrap()
    }

    /// Builds a shard planned for `planned` rows from `rows` rows pushed in
    /// batches of `batch`, and checks its file, checksum and sums against
    /// a whole-shard serialisation and [`NormStats::add`].
    fn check(dtype: StoreDtype, d: usize, planned: usize, rows: usize, batch: usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00000.safetensors");
        let acts = (Tensor::randn([rows as i64, d as i64], (Kind::Float, Device::Cpu)) * 40.0)
            .to_kind(dtype.kind());
        let tokens: Vec<i32> = (0..rows as i32).map(|r| r * 7 + 3).collect();
        let positions: Vec<i32> = (0..rows as i32).map(|r| r % 13).collect();
        let mut builder = ShardBuilder::new(dtype, d);
        // A first, abandoned shard leaves its buffers behind for the next.
        builder.start(&path, planned + 5).unwrap();
        builder.abandon();
        builder.start(&path, planned).unwrap();
        let mut at = 0;
        while at < rows {
            let n = batch.min(rows - at);
            builder
                .push(
                    &acts.narrow(0, at as i64, n as i64),
                    &tokens[at..at + n],
                    &positions[at..at + n],
                )
                .unwrap();
            at += n;
        }
        let built = builder.finish().unwrap();
        let expected = serialized(dtype, &acts, &tokens, &positions);
        let written = std::fs::read(&path).unwrap();
        assert!(written == expected, "{dtype:?} d={d} {rows}/{planned} rows");
        assert_eq!(built.bytes as usize, expected.len());
        assert_eq!(built.sha256, sha256_hex(&expected));
        assert_eq!(built.rows as usize, rows);
        assert_eq!(built.file, "shard-00000.safetensors");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "a temporary file was left: {names:?}");
        let mut whole = NormStats::new(d);
        whole.add(&acts).unwrap();
        let mut parts = NormStats::new(d);
        parts
            .add_sums(built.rows, built.norm_sum, &built.sum)
            .unwrap();
        assert_eq!(
            whole, parts,
            "{dtype:?} d={d} {rows} rows in batches of {batch}"
        );
    }

    #[test]
    fn shards_built_batch_by_batch_equal_whole_serialisations() {
        for dtype in [StoreDtype::F32, StoreDtype::Bf16, StoreDtype::F16] {
            check(dtype, 64, 96, 96, 32);
            check(dtype, 3, 10, 10, 3);
            check(dtype, 64, 96, 70, 32); // ended short
            check(dtype, 8, 4, 0, 1);
        }
    }

    #[test]
    fn shard_sums_are_bit_identical_to_whole_shard_sums() {
        // Past libtorch's grain size (32768), where reductions go parallel.
        check(StoreDtype::F32, 576, 40_000, 40_000, 2048);
        check(StoreDtype::Bf16, 64, 33_000, 33_000, 1000);
    }

    #[test]
    fn a_failed_or_abandoned_shard_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00000.safetensors");
        let mut builder = ShardBuilder::new(StoreDtype::F32, 4);
        builder.start(&path, 8).unwrap();
        assert!(tmp_path(&path).exists());
        let acts = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        builder.push(&acts, &[1, 2], &[0, 1]).unwrap();
        // Wrong width, wrong kind, too many rows.
        let wide = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        assert!(builder.push(&wide, &[1, 2], &[0, 1]).is_err());
        assert!(builder
            .push(&acts.to_kind(Kind::Double), &[1, 2], &[0, 1])
            .is_err());
        let many = Tensor::zeros([7, 4], (Kind::Float, Device::Cpu));
        assert!(builder.push(&many, &[0; 7], &[0; 7]).is_err());
        assert_eq!(builder.filled, 2);
        builder.abandon();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        assert!(builder.finish().is_err());
    }
}
