//! Corpus input: bad corpora give errors that name the file (and the line for
//! JSONL), and good ones stream the documents they hold.

use std::io::Write;
use std::path::Path;

use saescope::data::{Corpus, Document};

fn read(spec: &Path, field: &str) -> saescope::Result<Vec<Document>> {
    Corpus::open(&spec.to_string_lossy(), field)?
        .documents()
        .collect()
}

fn error(spec: &Path, field: &str) -> String {
    match read(spec, field) {
        Ok(docs) => panic!(
            "{} read without error: {} documents",
            spec.display(),
            docs.len()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.txt");
    let err = error(&path, "text");
    assert!(
        err.contains("nope.txt") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, b"fine\nalso fine\nbroken \xff\xfe here\n").unwrap();
    let err = error(&path, "text");
    assert!(
        err.contains("bad.txt line 3") && err.contains("invalid UTF-8"),
        "{err}"
    );
}

#[test]
fn empty_and_blank_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty.txt", &b""[..]),
        ("blank.txt", b"\n  \n\n"),
        ("empty.jsonl", b"\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = error(&path, "text");
        assert!(err.contains(name) && err.contains("empty file"), "{err}");
    }
}

#[test]
fn jsonl_without_the_field_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    std::fs::write(&path, "{\"text\": \"a\"}\n{\"body\": \"b\"}\n").unwrap();
    let err = error(&path, "text");
    assert!(
        err.contains("docs.jsonl line 2") && err.contains("no field `text`"),
        "{err}"
    );
    let err = error(&path, "body");
    assert!(
        err.contains("line 1") && err.contains("no field `body`"),
        "{err}"
    );
}

#[test]
fn jsonl_invalid_json_and_non_string_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    std::fs::write(&path, "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n").unwrap();
    let err = error(&path, "text");
    assert!(
        err.contains("line 3") && err.contains("invalid JSON"),
        "{err}"
    );
    std::fs::write(&path, "{\"text\": 5}\n").unwrap();
    let err = error(&path, "text");
    assert!(
        err.contains("line 1") && err.contains("not a string"),
        "{err}"
    );
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.txt.gz");
    std::fs::write(&path, b"\x1f\x8b\x08\x00garbage that is not deflate").unwrap();
    let err = error(&path, "text");
    assert!(
        err.contains("c.txt.gz") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn empty_folder_and_folder_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = error(dir.path(), "text");
    assert!(err.contains("no corpus files"), "{err}");
    std::fs::write(dir.path().join("b.txt"), "second\n").unwrap();
    std::fs::write(dir.path().join(".hidden"), "ignored\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"text\": \"first\"}\n").unwrap();
    std::fs::write(dir.path().join("a.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let texts: Vec<String> = read(dir.path(), "text")
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[test]
fn default_corpus_streams_lazily() {
    let corpus = Corpus::open("default", "text").unwrap();
    assert_eq!(corpus.files.len(), 3);
    let mut docs = corpus.documents();
    let batch = docs.next_batch(100).unwrap();
    assert_eq!(batch.len(), 100);
    assert!(batch
        .iter()
        .all(|d| !d.text.trim().is_empty() && d.text.len() <= 5 * 4096));
}

#[test]
fn hub_dataset_from_a_prefilled_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("datasets--org--corpus");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(snapshot.join("data")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    std::fs::write(
        snapshot.join("README.md"),
        "# a dataset card, not text to read\n",
    )
    .unwrap();
    std::fs::write(
        snapshot.join("data").join("train.jsonl"),
        "{\"text\": \"from the hub\"}\n",
    )
    .unwrap();
    // Only this test reads hub datasets, so the environment is ours to set.
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    for spec in ["hf:org/corpus", "org/corpus"] {
        let corpus = Corpus::open(spec, "text").unwrap();
        let texts: Vec<String> = corpus.documents().map(|d| d.unwrap().text).collect();
        assert_eq!(texts, ["from the hub"], "{spec}");
    }
    let err = Corpus::open("hf:org/missing", "text")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("org/missing") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}
