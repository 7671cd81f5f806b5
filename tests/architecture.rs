//! The layout rules of docs/architecture.md hold: no import circle between
//! the library's files, each top-level module imports only what its row of
//! the table allows, every folder opens with a `//!` paragraph, and no file
//! passes 600 lines. `scripts/import_graph.py --check` does the reading.

use std::path::Path;
use std::process::Command;

#[test]
fn the_module_layout_keeps_its_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/import_graph.py");
    let out = match Command::new("python3").arg(&script).arg("--check").output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: python3 is needed to read the import graph ({e})");
            return;
        }
    };
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("0 circles, 0 violations"), "{report}");
}
