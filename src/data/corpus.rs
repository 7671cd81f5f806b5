//! Corpus input: a spec string names plain-text files, a folder of them, JSON
//! Lines (`.jsonl`, one record per line, text in a chosen field), gzip versions
//! of both (`.gz`), a hub dataset (`hf:org/name`, see [`crate::io::hub`]), or
//! `default`: the three corpora set-up installs under `cache_dir()/corpora`.
//!
//! Documents stream lazily, so memory stays bounded whatever the corpus size:
//! a plain-text file is cut into paragraphs (blank-line separated), and a
//! paragraph longer than [`CHUNK_BYTES`] into chunks at line boundaries (lines
//! longer than that are cut too, at a character boundary). A JSONL record is
//! one document. Errors name the file, and the line for line-level problems.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::hub::{cache_dir, hub_cache_dir};

/// The spec that names the corpora `scripts/setup.sh` installs.
pub const DEFAULT_CORPUS: &str = "default";
/// The files of the default corpus, under `cache_dir()/corpora`.
pub const DEFAULT_CORPUS_FILES: [&str; 3] = ["gcide.txt", "python-docs.txt", "fortunes.txt"];
/// Paragraphs longer than this are cut into chunks of about this size.
pub const CHUNK_BYTES: usize = 4096;
/// The longest piece of one line read at once (longer lines are cut).
const MAX_PIECE: u64 = 4 * CHUNK_BYTES as u64;

/// How a file's text is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusFormat {
    /// Paragraphs separated by blank lines.
    Text,
    /// One JSON object per line; the text is a string field.
    Jsonl,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusFile {
    pub path: PathBuf,
    pub format: CorpusFormat,
    pub gzip: bool,
}

impl CorpusFile {
    /// The format of `path` from its name: `.jsonl[.gz]` is JSONL, anything
    /// else text; `.gz` is gzip.
    pub fn from_path(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let gzip = name.ends_with(".gz");
        let stem = name.strip_suffix(".gz").unwrap_or(&name);
        let format = if stem.ends_with(".jsonl") {
            CorpusFormat::Jsonl
        } else {
            CorpusFormat::Text
        };
        CorpusFile {
            path: path.to_path_buf(),
            format,
            gzip,
        }
    }
}

/// A piece of text to tokenize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    /// True when this piece ends a document (a separator token follows it);
    /// false for a chunk of a longer paragraph that the next piece continues.
    pub ends_document: bool,
}

/// A resolved corpus spec: its files, in reading order.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub spec: String,
    pub text_field: String,
    pub files: Vec<CorpusFile>,
}

impl Corpus {
    /// Resolves `spec` (see the module doc). Files are checked to exist now;
    /// their contents are checked while reading.
    pub fn open(spec: &str, text_field: &str) -> Result<Corpus> {
        let files = if spec == DEFAULT_CORPUS {
            let dir = cache_dir().join("corpora");
            DEFAULT_CORPUS_FILES
                .iter()
                .map(|name| {
                    let path = dir.join(name);
                    if path.is_file() {
                        Ok(CorpusFile::from_path(&path))
                    } else {
                        Err(Error::corpus(
                            &path,
                            None,
                            "missing file of the default corpus; run scripts/setup.sh",
                        ))
                    }
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let path = Path::new(spec);
            if let Some(id) = crate::io::hub::dataset_id(spec) {
                let snapshot = crate::io::hub::resolve_dataset(id, &hub_cache_dir())?;
                let mut found = Vec::new();
                collect_files(&snapshot, &mut found)?;
                found.retain(|p| {
                    p.file_name()
                        .is_some_and(|n| crate::io::hub::is_text_file(&n.to_string_lossy()))
                });
                if found.is_empty() {
                    return Err(Error::corpus(
                        &snapshot,
                        None,
                        "hub dataset has no .txt or .jsonl files (parquet is not supported)",
                    ));
                }
                found.iter().map(|p| CorpusFile::from_path(p)).collect()
            } else if path.is_dir() {
                let mut found = Vec::new();
                collect_files(path, &mut found)?;
                if found.is_empty() {
                    return Err(Error::corpus(path, None, "folder holds no corpus files"));
                }
                found.iter().map(|p| CorpusFile::from_path(p)).collect()
            } else if path.is_file() {
                vec![CorpusFile::from_path(path)]
            } else {
                return Err(Error::corpus(path, None, "no such file or folder"));
            }
        };
        if text_field.is_empty() {
            return Err(Error::InvalidArgument(
                "the JSONL text field name is empty".into(),
            ));
        }
        Ok(Corpus {
            spec: spec.to_string(),
            text_field: text_field.to_string(),
            files,
        })
    }

    /// A lazy stream of the corpus's documents, from the start.
    pub fn documents(&self) -> Documents {
        Documents {
            files: self.files.clone(),
            text_field: self.text_field.clone(),
            next_file: 0,
            current: None,
        }
    }
}

/// Regular, non-hidden files under `dir`, recursively, sorted by path.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The documents of a corpus, read lazily file by file.
pub struct Documents {
    files: Vec<CorpusFile>,
    text_field: String,
    next_file: usize,
    current: Option<FileDocuments>,
}

impl Documents {
    /// Up to `max_docs` documents, fewer only at the end of the corpus.
    pub fn next_batch(&mut self, max_docs: usize) -> Result<Vec<Document>> {
        let mut out = Vec::with_capacity(max_docs);
        while out.len() < max_docs {
            match self.next() {
                Some(doc) => out.push(doc?),
                None => break,
            }
        }
        Ok(out)
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if self.current.is_none() {
                let file = self.files.get(self.next_file)?.clone();
                self.next_file += 1;
                match FileDocuments::open(file, &self.text_field) {
                    Ok(docs) => self.current = Some(docs),
                    Err(e) => return Some(Err(e)),
                }
            }
            let current = self.current.as_mut()?;
            match current.next_document() {
                Ok(Some(doc)) => return Some(Ok(doc)),
                Ok(None) => self.current = None,
                Err(e) => {
                    self.current = None;
                    self.next_file = self.files.len();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// One line (or piece of an overlong line) of a file.
struct Piece {
    text: String,
    /// The piece ends its line (a newline or the end of the file follows).
    ends_line: bool,
}

/// The documents of one file.
struct FileDocuments {
    file: CorpusFile,
    text_field: String,
    reader: Box<dyn BufRead + Send>,
    /// 1-based number of the line being read.
    line: usize,
    /// Bytes of an incomplete UTF-8 character carried to the next piece.
    carry: Vec<u8>,
    /// Whether the file has yielded any non-blank text yet.
    saw_text: bool,
    /// A paragraph being assembled (text format).
    paragraph: String,
    /// A full chunk of the paragraph, not yet returned.
    held: Option<String>,
    eof: bool,
}

impl FileDocuments {
    fn open(file: CorpusFile, text_field: &str) -> Result<Self> {
        let raw = File::open(&file.path)
            .map_err(|e| Error::corpus(&file.path, None, format!("cannot open: {e}")))?;
        let reader: Box<dyn BufRead + Send> = if file.gzip {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(raw)))
        } else {
            Box::new(BufReader::new(raw))
        };
        Ok(FileDocuments {
            file,
            text_field: text_field.to_string(),
            reader,
            line: 1,
            carry: Vec::new(),
            saw_text: false,
            paragraph: String::new(),
            held: None,
            eof: false,
        })
    }

    fn err(&self, line: Option<usize>, reason: impl Into<String>) -> Error {
        Error::corpus(&self.file.path, line, reason)
    }

    /// The next piece of a line, at most `limit` bytes (plus a carried partial character).
    fn next_piece(&mut self, limit: u64) -> Result<Option<Piece>> {
        if self.eof {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.carry);
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.err(Some(self.line), format!("cannot read: {e}")))?;
        if n == 0 {
            self.eof = true;
            if !buf.is_empty() {
                return Err(self.err(
                    Some(self.line),
                    "invalid UTF-8 (truncated character at end of file)",
                ));
            }
            return Ok(None);
        }
        let ends_line = buf.last() == Some(&b'\n');
        let text = match String::from_utf8(buf) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                // A character cut by the piece limit: carry its bytes over.
                if !ends_line && e.utf8_error().error_len().is_none() {
                    let mut bytes = e.into_bytes();
                    self.carry = bytes.split_off(valid);
                    String::from_utf8(bytes)
                        .map_err(|_| self.err(Some(self.line), "invalid UTF-8"))?
                } else {
                    return Err(self.err(
                        Some(self.line),
                        format!("invalid UTF-8 at byte {valid} of the line"),
                    ));
                }
            }
        };
        let piece = Piece { text, ends_line };
        if ends_line {
            self.line += 1;
        }
        Ok(Some(piece))
    }

    fn next_document(&mut self) -> Result<Option<Document>> {
        let doc = match self.file.format {
            CorpusFormat::Text => self.next_paragraph()?,
            CorpusFormat::Jsonl => self.next_record()?,
        };
        if doc.is_none() && !self.saw_text {
            return Err(self.err(None, "empty file (no text)"));
        }
        Ok(doc)
    }

    fn next_paragraph(&mut self) -> Result<Option<Document>> {
        loop {
            let piece = self.next_piece(MAX_PIECE)?;
            let Some(piece) = piece.filter(|p| !(p.ends_line && p.text.trim().is_empty())) else {
                // A blank line or the end of the file ends the paragraph.
                if let Some(held) = self.held.take() {
                    let text = held.trim_end().to_string();
                    return Ok(Some(Document {
                        text,
                        ends_document: true,
                    }));
                }
                let text = std::mem::take(&mut self.paragraph);
                if !text.trim().is_empty() {
                    let text = text.trim_end().to_string();
                    return Ok(Some(Document {
                        text,
                        ends_document: true,
                    }));
                }
                if self.eof {
                    return Ok(None);
                }
                continue;
            };
            self.saw_text = true;
            self.paragraph.push_str(&piece.text);
            // A full chunk is held back until we know whether the paragraph
            // goes on (a continuation) or ends (a document end).
            let held = self.held.take();
            if self.paragraph.len() >= CHUNK_BYTES {
                self.held = Some(std::mem::take(&mut self.paragraph));
            }
            if let Some(text) = held {
                return Ok(Some(Document {
                    text,
                    ends_document: false,
                }));
            }
        }
    }

    fn next_record(&mut self) -> Result<Option<Document>> {
        loop {
            let line_no = self.line;
            let mut line = String::new();
            while let Some(piece) = self.next_piece(u64::MAX)? {
                line.push_str(&piece.text);
                if piece.ends_line {
                    break;
                }
            }
            if line.is_empty() && self.eof {
                return Ok(None);
            }
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| self.err(Some(line_no), format!("invalid JSON: {e}")))?;
            let field = value.get(&self.text_field).ok_or_else(|| {
                self.err(
                    Some(line_no),
                    format!("record has no field `{}`", self.text_field),
                )
            })?;
            let text = field.as_str().ok_or_else(|| {
                self.err(
                    Some(line_no),
                    format!("field `{}` is not a string", self.text_field),
                )
            })?;
            self.saw_text = true;
            if text.trim().is_empty() {
                continue;
            }
            return Ok(Some(Document {
                text: text.to_string(),
                ends_document: true,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn docs(spec: &Path, field: &str) -> Result<Vec<Document>> {
        Corpus::open(spec.to_str().unwrap(), field)?
            .documents()
            .collect()
    }

    #[test]
    fn paragraphs_and_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let long = "word ".repeat(2000) + "\n";
        let text = format!("first line\nsecond line\n\n\n{long}{long}\nlast");
        let path = write(dir.path(), "a.txt", text.as_bytes());
        let got = docs(&path, "text").unwrap();
        assert_eq!(got[0].text, "first line\nsecond line");
        assert!(got[0].ends_document);
        // The two long lines form one paragraph cut into chunks that continue.
        let chunks: Vec<&Document> = got[1..got.len() - 1].iter().collect();
        assert!(chunks.len() >= 2);
        assert!(!chunks[0].ends_document);
        assert!(
            chunks[chunks.len() - 1].ends_document,
            "the paragraph's end is marked"
        );
        let joined: String = chunks.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(joined, format!("{long}{long}").trim_end());
        assert_eq!(got.last().unwrap().text, "last");
    }

    #[test]
    fn multibyte_characters_survive_piece_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let text = "é".repeat(40_000);
        let path = write(dir.path(), "a.txt", text.as_bytes());
        let joined: String = docs(&path, "text")
            .unwrap()
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn gzip_jsonl_with_a_chosen_field() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"body\": \"one\"}\n\n{\"body\": \"two\", \"x\": 1}\n")
            .unwrap();
        let path = write(dir.path(), "c.jsonl.gz", &gz.finish().unwrap());
        let got: Vec<String> = docs(&path, "body")
            .unwrap()
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(got, ["one", "two"]);
    }
}
