//! Writing a feature dictionary: the JSONL file and its reader
//! (`dictionary`), the static HTML browser beside it (`browser`), and
//! [`save_dictionary`], which writes the whole folder.

pub mod browser;
pub mod dictionary;

use std::path::Path;

use self::dictionary::{
    write_dictionary, DictionaryMeta, FeatureEntry, DENSITY_PLOT_FILE, VOCABULARY_FILE,
};
use crate::error::Result;
use crate::io::atomic::write_atomic;
use crate::label::vocabulary::Vocabulary;
use crate::plots::{histogram_svg, log10_densities};

/// Writes a dictionary folder: the JSONL features and their metadata, the
/// vocabulary, the browser and the density histogram.
pub fn save_dictionary(
    dir: &Path,
    entries: &[FeatureEntry],
    meta: &DictionaryMeta,
    vocabulary: &Vocabulary,
) -> Result<()> {
    write_dictionary(dir, entries, meta)?;
    vocabulary.save(&dir.join(VOCABULARY_FILE))?;
    browser::write_browser(dir, entries, meta)?;
    let densities: Vec<f64> = entries.iter().map(|e| e.frac_nonzero).collect();
    let svg = histogram_svg(
        &log10_densities(&densities),
        50,
        "Feature density",
        "log10(fraction of tokens where the feature fires)",
    )?;
    write_atomic(&dir.join(DENSITY_PLOT_FILE), svg.as_bytes())
}
