//! The activation store on its own: `verify` and the reader catch corrupt and
//! truncated shards and name them; the shuffled reader serves every row exactly
//! once per epoch, in an order set by the seed.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use saescope::data::store::manifest::{ModelInfo, NormStats, FORMAT_VERSION};
use saescope::data::store::ShardData;
use saescope::data::{
    harvest, ActivationSource, HarvestConfig, Manifest, ReaderConfig, Silent, Store, StoreDtype,
    StoreReader, StoreWriter,
};
use saescope::hooks::HookPoint;
use tch::{Kind, Tensor};

const D: usize = 3;

fn manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        model: ModelInfo {
            spec: "synthetic".into(),
            sha256: "0".repeat(64),
            architecture: "none".into(),
            n_layers: 0,
            d_model: D as i64,
            dtype: "f32".into(),
        },
        hook: "blocks.0.hook_resid_post".into(),
        dtype: StoreDtype::F32,
        d: D,
        context: 1,
        skip_bos: false,
        bos_token_id: None,
        separator_token_id: None,
        corpus: "synthetic".into(),
        text_field: "text".into(),
        seed: 0,
        batch: 1,
        windows_per_shard: 1,
        target_tokens: 0,
        tokens: 0,
        windows: 0,
        complete: false,
        corpus_exhausted: false,
        shards: Vec::new(),
        stats: NormStats::new(D),
    }
}

/// A store whose row `r` is `[r, r, r]` with token id `r`, in shards of `sizes` rows.
fn synthetic_store(dir: &Path, sizes: &[usize]) -> usize {
    let mut writer = StoreWriter::create(dir, manifest()).unwrap();
    let mut next = 0usize;
    for &rows in sizes {
        let ids: Vec<i32> = (next..next + rows).map(|r| r as i32).collect();
        let acts = Tensor::from_slice(&ids)
            .to_kind(Kind::Float)
            .unsqueeze(1)
            .expand([rows as i64, D as i64], false);
        writer
            .append(&ShardData {
                acts,
                tokens: ids.clone(),
                positions: vec![0; rows],
                first_window: next as u64,
                windows: rows as u64,
            })
            .unwrap();
        next += rows;
    }
    writer.finish(false).unwrap();
    next
}

/// Every row id served, batch by batch, checking that rows stay whole and
/// that token ids follow their rows.
fn read_all(dir: &Path, cfg: ReaderConfig) -> Vec<Vec<i64>> {
    let mut reader = StoreReader::new(Store::open(dir).unwrap(), cfg).unwrap();
    let mut batches = Vec::new();
    while let Some(batch) = reader.next_batch().unwrap() {
        assert_eq!(batch.acts.size()[1], D as i64);
        assert!(batch.acts.size()[0] as usize <= cfg.batch_size);
        let first = batch.acts.select(1, 0);
        for c in 1..D as i64 {
            assert!(
                batch.acts.select(1, c).equal(&first),
                "a row was torn apart"
            );
        }
        let ids = Vec::<f32>::try_from(&first)
            .unwrap()
            .iter()
            .map(|&x| x as i64)
            .collect::<Vec<_>>();
        let tokens = Vec::<i64>::try_from(batch.tokens.as_ref().unwrap()).unwrap();
        assert_eq!(ids, tokens, "token ids do not follow their rows");
        batches.push(ids);
    }
    batches
}

fn epochs(batches: &[Vec<i64>], rows: usize) -> Vec<Vec<i64>> {
    let flat: Vec<i64> = batches.iter().flatten().copied().collect();
    flat.chunks(rows).map(|c| c.to_vec()).collect()
}

#[test]
fn shuffled_reader_serves_every_row_once_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let rows = synthetic_store(dir.path(), &[10, 7, 13, 5, 9]);
    let cfg = ReaderConfig {
        batch_size: 4,
        buffer_shards: 2,
        epochs: 3,
        seed: 1,
        with_tokens: true,
        ..ReaderConfig::new(4)
    };
    let batches = read_all(dir.path(), cfg);
    let per_epoch = epochs(&batches, rows);
    assert_eq!(per_epoch.len(), 3);
    for (e, order) in per_epoch.iter().enumerate() {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..rows as i64).collect::<Vec<_>>(),
            "epoch {e} is not a permutation"
        );
        assert_ne!(
            *order,
            (0..rows as i64).collect::<Vec<_>>(),
            "epoch {e} is not shuffled"
        );
    }
    assert_ne!(per_epoch[0], per_epoch[1]);
    assert_ne!(per_epoch[1], per_epoch[2]);
    // Only the last batch of an epoch may be short: 44 rows = 11 batches of 4.
    assert_eq!(batches.len(), 33);
    // Same seed, same order; another seed, another order.
    assert_eq!(read_all(dir.path(), cfg), batches);
    let other = read_all(dir.path(), ReaderConfig { seed: 2, ..cfg });
    assert_ne!(epochs(&other, rows)[0], per_epoch[0]);
}

#[test]
fn rows_are_mixed_across_shards_within_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let rows = synthetic_store(dir.path(), &[20, 20, 20, 20]);
    let cfg = ReaderConfig {
        with_tokens: true,
        buffer_shards: 2,
        ..ReaderConfig::new(8)
    };
    let batches = read_all(dir.path(), cfg);
    assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), rows);
    let mixed = batches
        .iter()
        .filter(|b| b.iter().map(|r| r / 20).collect::<HashSet<_>>().len() > 1)
        .count();
    assert!(mixed > 0, "no batch mixes rows of two shards");
}

fn harvested_store(dir: &Path) -> std::path::PathBuf {
    let model = common::tiny_llama();
    let corpus = common::write_corpus(dir, 100);
    let cfg = HarvestConfig {
        corpus: corpus.to_string_lossy().into_owned(),
        text_field: "text".into(),
        hooks: vec![HookPoint::resid_post(0)],
        tokens: 160,
        context: 16,
        batch: 2,
        dtype: StoreDtype::F16,
        skip_bos: false,
        seed: 0,
        shard_tokens: 32,
        resume: false,
        out: dir.join("store"),
    };
    harvest(&model, &cfg, &mut Silent).unwrap();
    cfg.out
}

fn verify_cli(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(["store", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn first_error(dir: &Path) -> String {
    let cfg = ReaderConfig {
        buffer_shards: 1,
        ..ReaderConfig::new(16)
    };
    let mut reader = StoreReader::new(Store::open(dir).unwrap(), cfg).unwrap();
    loop {
        match reader.next_batch() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the reader served a damaged store without complaint"),
            Err(e) => return e.to_string(),
        }
    }
}

#[test]
fn verify_and_reader_catch_a_corrupted_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = harvested_store(dir.path());
    assert_eq!(verify_cli(&store), (true, String::new()));
    let shard = store.join("shard-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();

    let problems = Store::open(&store).unwrap().verify();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, "shard-00003.safetensors");
    assert!(
        problems[0].reason.contains("corrupt"),
        "{}",
        problems[0].reason
    );
    let (ok, stderr) = verify_cli(&store);
    assert!(!ok);
    assert!(
        stderr.contains("shard-00003.safetensors") && stderr.contains("corrupt"),
        "{stderr}"
    );
    let err = first_error(&store);
    assert!(
        err.contains("shard-00003.safetensors") && err.contains("sha256"),
        "{err}"
    );
}

#[test]
fn verify_and_reader_catch_a_truncated_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = harvested_store(dir.path());
    let shard = store.join("shard-00001.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, stderr) = verify_cli(&store);
    assert!(!ok);
    assert!(
        stderr.contains("shard-00001.safetensors") && stderr.contains("truncated"),
        "{stderr}"
    );
    let err = first_error(&store);
    assert!(
        err.contains("shard-00001.safetensors") && err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_file(&shard).unwrap();
    let (ok, stderr) = verify_cli(&store);
    assert!(
        !ok && stderr.contains("shard-00001.safetensors"),
        "{stderr}"
    );
}

#[test]
fn store_info_and_verify_explain_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_saescope"))
        .args(["store", "info"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest.json"));
    let err = Store::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn failed_writes_leave_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |first: usize| {
        let ids: Vec<i32> = (first as i32..first as i32 + 4).collect();
        ShardData {
            acts: Tensor::from_slice(&ids)
                .to_kind(Kind::Float)
                .unsqueeze(1)
                .expand([4, D as i64], false),
            tokens: ids,
            positions: vec![0; 4],
            first_window: first as u64,
            windows: 4,
        }
    };
    let mut writer = StoreWriter::create(dir.path(), manifest()).unwrap();
    writer.append(&shard(0)).unwrap();
    // The shard file cannot be written (its temporary path is taken by a folder).
    let blocker = dir.path().join("shard-00001.safetensors.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let err = writer.append(&shard(4)).unwrap_err().to_string();
    assert!(err.contains("shard-00001.safetensors.tmp"), "{err}");
    std::fs::remove_dir(&blocker).unwrap();
    let on_disk = Manifest::read(dir.path()).unwrap();
    assert_eq!((on_disk.shards.len(), on_disk.tokens), (1, 4));
    assert!(Store::open(dir.path()).unwrap().verify().is_empty());
    // The shard is written but the manifest cannot be: the old manifest stays,
    // and the unlisted shard is discarded when the store is reopened.
    let blocker = dir.path().join("manifest.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let err = writer.append(&shard(4)).unwrap_err().to_string();
    assert!(err.contains("manifest.json.tmp"), "{err}");
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(Manifest::read(dir.path()).unwrap(), on_disk);
    assert!(dir.path().join("shard-00001.safetensors").exists());
    let mut writer = StoreWriter::resume(dir.path()).unwrap();
    assert!(!dir.path().join("shard-00001.safetensors").exists());
    writer.append(&shard(4)).unwrap();
    writer.finish(false).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.verify().is_empty());
    assert_eq!(store.manifest().tokens, 8);
    let tokens = Vec::<i32>::try_from(&store.load_shard(1).unwrap().tokens).unwrap();
    assert_eq!(tokens, [4, 5, 6, 7]);
}
