//! ggml tensor types and their dequantisation to f32: F32, F16, BF16, and the
//! block-quantised Q4_0, Q4_1, Q8_0 (blocks of 32) and Q4_K, Q6_K
//! (super-blocks of 256).
//!
//! Block layouts follow ggml (`ggml-common.h`, `dequantize_row_*` in
//! `ggml-quants.c`); all scalars are little-endian, `d`/`m` scales are f16.
//! Each value is computed with the same f32 operations, in the same order, as
//! ggml's reference code, so results match it (and the `gguf` Python package)
//! bit for bit. Blocks are independent, so the work is spread across threads
//! with rayon.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::vectorized_fn;

/// The storage type of a tensor. The named variants are the ones
/// [`dequantize`] handles; every other ggml type id is kept as `Other(id)` so
/// that a file using it still opens.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
    Other(u32),
}

/// ggml's type ids, names and block layouts (elements per block, bytes per
/// block), from `ggml.h` and ggml's type traits. Ids 4, 5, 31–33 and 36–38
/// are retired.
const GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    fn table_entry(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        let id = self.id();
        GGML_TYPES.iter().find(|e| e.0 == id)
    }

    /// ggml's name for the type (`"Q4_K"`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.table_entry().map_or("unknown", |e| e.1)
    }

    /// Elements per block, when the layout is known.
    pub fn block_size(self) -> Option<usize> {
        self.table_entry().map(|e| e.2)
    }

    /// Bytes per block, when the layout is known.
    pub fn block_bytes(self) -> Option<usize> {
        self.table_entry().map(|e| e.3)
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        !matches!(self, GgmlType::Other(_))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (ggml type {})", self.name(), self.id())
    }
}

/// Dequantises `n_elements` values of type `ty` from `data`, which must hold
/// exactly the whole blocks those elements take. The error is a sentence
/// saying what does not fit.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, String> {
    let (Some(block), Some(block_bytes)) = (ty.block_size(), ty.block_bytes()) else {
        return Err(format!("{ty} has no known block layout"));
    };
    if !n_elements.is_multiple_of(block) {
        return Err(format!(
            "{n_elements} elements of {ty} are not whole blocks of {block}"
        ));
    }
    let n_blocks = n_elements / block;
    let expected = n_blocks.checked_mul(block_bytes);
    if expected != Some(data.len()) {
        return Err(format!(
            "{n_elements} elements of {ty} take {} bytes, got {}",
            expected.map_or("too many".to_string(), |e| e.to_string()),
            data.len()
        ));
    }
    let mut out = vec![0f32; n_elements];
    let layout = (block, block_bytes);
    match ty {
        GgmlType::F32 => dequantize_blocks(data, &mut out, layout, block_f32),
        GgmlType::F16 => dequantize_blocks(data, &mut out, layout, block_f16),
        GgmlType::BF16 => dequantize_blocks(data, &mut out, layout, block_bf16),
        GgmlType::Q4_0 => dequantize_blocks(data, &mut out, layout, block_q4_0),
        GgmlType::Q4_1 => dequantize_blocks(data, &mut out, layout, block_q4_1),
        GgmlType::Q8_0 => dequantize_blocks(data, &mut out, layout, block_q8_0),
        GgmlType::Q4_K => dequantize_blocks(data, &mut out, layout, block_q4_k),
        GgmlType::Q6_K => dequantize_blocks(data, &mut out, layout, block_q6_k),
        GgmlType::Other(_) => return Err(format!("cannot dequantise {ty}")),
    }
    Ok(out)
}

/// Runs `kernel` over every block, in parallel tasks of ~16k elements: enough
/// to amortise scheduling, small enough to balance a 576×576 matrix over
/// many cores. `kernel` is a generic, so each type's block kernel is compiled
/// into the tier's vectorised task loop.
fn dequantize_blocks<K>(
    data: &[u8],
    out: &mut [f32],
    (block, block_bytes): (usize, usize),
    kernel: K,
) where
    K: Fn(&[u8], &mut [f32]) + Copy + Send + Sync,
{
    let blocks_per_task = (16 * 1024 / block).max(1);
    out.par_chunks_mut(block * blocks_per_task)
        .zip(data.par_chunks(block_bytes * blocks_per_task))
        .for_each(|(out, data)| dequantize_task(out, data, (block, block_bytes), kernel));
}

vectorized_fn! {
    fn dequantize_task[K: Fn(&[u8], &mut [f32])](
        out: &mut [f32],
        data: &[u8],
        layout: (usize, usize),
        kernel: K,
    ) {
        let (block, block_bytes) = layout;
        for (y, x) in out.chunks_exact_mut(block).zip(data.chunks_exact(block_bytes)) {
            kernel(x, y);
        }
    }
}

#[inline(always)]
fn f16_at(x: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([x[i], x[i + 1]])).to_f32()
}

#[inline(always)]
fn block_f32(x: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
}

#[inline(always)]
fn block_f16(x: &[u8], y: &mut [f32]) {
    y[0] = f16_at(x, 0);
}

#[inline(always)]
fn block_bf16(x: &[u8], y: &mut [f32]) {
    y[0] = bf16::from_bits(u16::from_le_bytes([x[0], x[1]])).to_f32();
}

/// Q4_0, 18 bytes: f16 `d`, 16 bytes of nibbles. Low nibbles are elements
/// 0–15, high nibbles 16–31; value = d·(q − 8).
#[inline(always)]
fn block_q4_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (j, &q) in x[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1, 20 bytes: f16 `d`, f16 `m`, 16 bytes of nibbles laid out as Q4_0;
/// value = d·q + m.
#[inline(always)]
fn block_q4_1(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let m = f16_at(x, 2);
    for (j, &q) in x[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0f) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q8_0, 34 bytes: f16 `d`, 32 int8; value = d·q.
#[inline(always)]
fn block_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (j, &q) in x[2..34].iter().enumerate() {
        y[j] = d * (q as i8) as f32;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K super-block,
/// packed in 12 bytes: sub-blocks 0–3 in the low 6 bits of bytes 0–3 (scale)
/// and 4–7 (min); sub-blocks 4–7 take their low 4 bits from the nibbles of
/// bytes 8–11 and their high 2 bits from the top bits of bytes 0–7.
fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K, 144 bytes: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and
/// mins, 128 bytes of nibbles. Each 64 elements share 32 bytes: the low
/// nibbles are sub-block 2i, the high nibbles sub-block 2i+1; value =
/// (d·scale)·q − dmin·min.
#[inline(always)]
fn block_q4_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let dmin = f16_at(x, 2);
    let scales = &x[4..16];
    let qs = &x[16..144];
    for i in 0..4 {
        let (sc1, m1) = q4_k_scale_min(2 * i, scales);
        let (sc2, m2) = q4_k_scale_min(2 * i + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * i..32 * i + 32];
        let y = &mut y[64 * i..64 * i + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0f) as f32 - min1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// Q6_K, 210 bytes: 128 bytes of low nibbles `ql`, 64 bytes of high 2-bit
/// pairs `qh`, 16 int8 scales, f16 `d`. Each half of 128 elements uses 64
/// bytes of `ql`, 32 of `qh` and 8 scales (one per 16 elements); value =
/// (d·scale)·(q − 32).
#[inline(always)]
fn block_q6_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 208);
    for half in 0..2 {
        let ql = &x[64 * half..64 * half + 64];
        let qh = &x[128 + 32 * half..128 + 32 * half + 32];
        let sc = &x[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = scale(0) * q1 as f32;
            y[l + 32] = scale(2) * q2 as f32;
            y[l + 64] = scale(4) * q3 as f32;
            y[l + 96] = scale(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// 16 bytes of nibbles holding `q[0..32]`: low nibbles 0–15, high 16–31.
    fn nibbles(q: &[u8; 32]) -> Vec<u8> {
        (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
    }

    fn ramp() -> [u8; 32] {
        std::array::from_fn(|i| (i % 16) as u8 ^ ((i / 16) as u8 * 5))
    }

    #[test]
    fn type_table() {
        assert_eq!(GgmlType::from_id(3), GgmlType::Q4_1);
        assert_eq!(GgmlType::from_id(13), GgmlType::Other(13));
        assert_eq!(GgmlType::Other(13).name(), "Q5_K");
        assert_eq!(GgmlType::Q6_K.block_bytes(), Some(210));
        assert_eq!(GgmlType::Q4_K.block_size(), Some(256));
        assert_eq!(GgmlType::Other(999).block_size(), None);
        for &(id, _, _, _) in GGML_TYPES {
            assert_eq!(GgmlType::from_id(id).id(), id);
        }
        assert_eq!(GgmlType::BF16.to_string(), "BF16 (ggml type 30)");
    }

    #[test]
    fn float_types() {
        let x: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &x, 2).unwrap(), vec![1.5, -2.25]);
        let x: Vec<u8> = [0.5f32, -3.0, 65504.0]
            .iter()
            .flat_map(|&v| f16_bytes(v))
            .collect();
        assert_eq!(
            dequantize(GgmlType::F16, &x, 3).unwrap(),
            vec![0.5, -3.0, 65504.0]
        );
        // bf16 is the top half of an f32.
        let x: Vec<u8> = [1.0f32, -0.15625, 3.0e38]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let y = dequantize(GgmlType::BF16, &x, 3).unwrap();
        assert_eq!(&y[..2], &[1.0, -0.15625]);
        assert_eq!(y[2].to_bits(), 3.0e38f32.to_bits() & 0xffff_0000);
    }

    #[test]
    fn q4_0_block() {
        let q = ramp();
        let mut x = f16_bytes(0.5).to_vec();
        x.extend(nibbles(&q));
        let y = dequantize(GgmlType::Q4_0, &x, 32).unwrap();
        for i in 0..32 {
            assert_eq!(y[i], 0.5 * (q[i] as f32 - 8.0), "element {i}");
        }
    }

    #[test]
    fn q4_1_block() {
        let q = ramp();
        let mut x = f16_bytes(0.25).to_vec();
        x.extend(f16_bytes(-1.5));
        x.extend(nibbles(&q));
        // Two blocks: the second with d = 2, m = 0.
        x.extend(f16_bytes(2.0));
        x.extend(f16_bytes(0.0));
        x.extend(nibbles(&q));
        let y = dequantize(GgmlType::Q4_1, &x, 64).unwrap();
        assert_eq!(y[0], 0.25 * q[0] as f32 - 1.5);
        for i in 0..32 {
            assert_eq!(y[i], 0.25 * q[i] as f32 - 1.5, "element {i}");
            assert_eq!(y[32 + i], 2.0 * q[i] as f32, "element {}", 32 + i);
        }
        // Element 16 comes from the high nibble of byte 0.
        assert_eq!(y[16], 0.25 * 5.0 - 1.5);
    }

    #[test]
    fn q8_0_block() {
        let q: [i8; 32] = std::array::from_fn(|i| (i as i8 - 16) * 8);
        let mut x = f16_bytes(0.125).to_vec();
        x.extend(q.iter().map(|&v| v as u8));
        let y = dequantize(GgmlType::Q8_0, &x, 32).unwrap();
        for i in 0..32 {
            assert_eq!(y[i], 0.125 * q[i] as f32);
        }
        assert_eq!(y[0], -16.0);
        assert_eq!(y[31], 15.0);
    }

    /// Packs eight 6-bit (scale, min) pairs the way Q4_K stores them.
    fn pack_q4_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] & 63;
            s[j + 4] = m[j] & 63;
        }
        for j in 4..8 {
            s[j + 4] = (sc[j] & 0x0f) | ((m[j] & 0x0f) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (m[j] >> 4) << 6;
        }
        s
    }

    #[test]
    fn q4_k_block() {
        // Scales and mins that use all six bits, including the high ones of
        // sub-blocks 4–7.
        let sc = [1u8, 7, 20, 63, 17, 33, 48, 62];
        let m = [0u8, 5, 63, 9, 40, 16, 3, 61];
        let packed = pack_q4_k_scales(&sc, &m);
        for j in 0..8 {
            assert_eq!(q4_k_scale_min(j, &packed), (sc[j], m[j]), "sub-block {j}");
        }
        let (d, dmin) = (0.5f32, 0.25f32);
        let q: Vec<u8> = (0..256).map(|i| ((i * 7 + i / 32) % 16) as u8).collect();
        let mut x = f16_bytes(d).to_vec();
        x.extend(f16_bytes(dmin));
        x.extend(packed);
        // Element e: chunk i = e / 64 uses bytes 32i..32i+32; its first 32
        // elements are low nibbles, the next 32 high nibbles.
        for i in 0..4 {
            for l in 0..32 {
                x.push(q[64 * i + l] | (q[64 * i + 32 + l] << 4));
            }
        }
        assert_eq!(x.len(), 144);
        let y = dequantize(GgmlType::Q4_K, &x, 256).unwrap();
        for e in 0..256 {
            let sub = e / 32;
            let want = d * sc[sub] as f32 * q[e] as f32 - dmin * m[sub] as f32;
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn q6_k_block() {
        let q: Vec<u8> = (0..256).map(|i| ((i * 11 + 3) % 64) as u8).collect();
        let scales: [i8; 16] = std::array::from_fn(|i| (i as i8 - 8) * 9);
        let d = 0.0625f32;
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        // Element 128h + 32k + l (k = 0..4) keeps its low nibble in
        // ql[64h + l + 32(k % 2)] (low half for k < 2, high half otherwise)
        // and its top two bits in qh[32h + l] at bits 2k.
        for h in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let v = q[128 * h + 32 * k + l];
                    let b = 64 * h + l + 32 * (k % 2);
                    ql[b] |= if k < 2 { v & 0x0f } else { (v & 0x0f) << 4 };
                    qh[32 * h + l] |= (v >> 4) << (2 * k);
                }
            }
        }
        let mut x = ql.to_vec();
        x.extend(qh);
        x.extend(scales.iter().map(|&s| s as u8));
        x.extend(f16_bytes(d));
        assert_eq!(x.len(), 210);
        let y = dequantize(GgmlType::Q6_K, &x, 256).unwrap();
        for e in 0..256 {
            let want = d * scales[e / 16] as f32 * (q[e] as f32 - 32.0);
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn many_blocks_in_parallel() {
        // More blocks than one task holds: order must be preserved.
        let n_blocks = 3000;
        let mut x = Vec::new();
        for b in 0..n_blocks {
            x.extend(f16_bytes(1.0));
            x.extend((0..32).map(|i| ((b + i) % 100) as u8));
        }
        let y = dequantize(GgmlType::Q8_0, &x, 32 * n_blocks).unwrap();
        for b in 0..n_blocks {
            for i in 0..32 {
                assert_eq!(y[32 * b + i], ((b + i) % 100) as f32);
            }
        }
    }

    #[test]
    fn size_mismatches_are_errors() {
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 68], 32).is_err());
        assert!(dequantize(GgmlType::F32, &[0; 4], usize::MAX).is_err());
        assert!(dequantize(GgmlType::Other(13), &[0; 176], 256).is_err());
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[], 0).unwrap(),
            Vec::<f32>::new()
        );
    }
}
