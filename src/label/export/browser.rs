//! The static feature browser of a feature dictionary: `index.html` (the page
//! in `browser.html`, self-contained: inline CSS and JS, no external URLs) and
//! `features.js`, which sets `window.SAESCOPE_DICTIONARY = {meta, features}`.
//! The page loads `features.js` with a `<script src>`, so opening
//! `index.html` straight from disk (file://, where `fetch()` is forbidden)
//! works. `index.html?q=WORD` or `index.html#q=WORD` opens it on a search (a
//! number searches by feature index).

use std::path::Path;

use serde::Serialize;

use super::dictionary::{DictionaryMeta, FeatureEntry};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

pub const INDEX_FILE: &str = "index.html";
pub const DATA_FILE: &str = "features.js";

/// The page; it reads its data from [`DATA_FILE`].
pub const TEMPLATE: &str = include_str!("browser.html");

/// The global that `features.js` sets.
const DATA_PREFIX: &str = "window.SAESCOPE_DICTIONARY = ";

#[derive(Serialize)]
struct BrowserData<'a> {
    meta: &'a DictionaryMeta,
    features: &'a [FeatureEntry],
}

/// Writes `index.html` and `features.js` atomically into `dir` (created if
/// missing).
pub fn write_browser(dir: &Path, entries: &[FeatureEntry], meta: &DictionaryMeta) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|cause| Error::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    let json = serde_json::to_string(&BrowserData {
        meta,
        features: entries,
    })?;
    write_atomic(&dir.join(DATA_FILE), features_js(&json).as_bytes())?;
    write_atomic(&dir.join(INDEX_FILE), TEMPLATE.as_bytes())
}

/// `features.js` around the JSON text `json`.
fn features_js(json: &str) -> String {
    let escaped = escape_for_script(json);
    let mut out = String::with_capacity(DATA_PREFIX.len() + escaped.len() + 2);
    out.push_str(DATA_PREFIX);
    out.push_str(&escaped);
    out.push_str(";\n");
    out
}

/// Makes JSON text safe to place inside a `<script>` element, keeping it
/// valid JSON with the same value: `</` becomes `<\/` (so no `</script>` can
/// close the element), `<!--` becomes `\u003c!--` (which could otherwise
/// switch the HTML parser's script states), and U+2028 / U+2029 become
/// `\u2028` / `\u2029` (line terminators in older JavaScript). All of these
/// characters can only occur inside JSON strings, where the replacements are
/// valid escapes, and none is part of an escape sequence, so no escape is
/// split.
pub fn escape_for_script(json: &str) -> String {
    const REPLACEMENTS: [(&str, &str); 4] = [
        ("</", "<\\/"),
        ("<!--", "\\u003c!--"),
        ("\u{2028}", "\\u2028"),
        ("\u{2029}", "\\u2029"),
    ];
    let mut out = String::with_capacity(json.len() + json.len() / 64);
    let mut rest = json;
    while let Some(i) = rest.find(['<', '\u{2028}', '\u{2029}']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match REPLACEMENTS
            .iter()
            .find_map(|&(from, to)| rest.strip_prefix(from).map(|tail| (to, tail)))
        {
            Some((to, tail)) => {
                out.push_str(to);
                rest = tail;
            }
            None => {
                // A `<` starting nothing dangerous.
                out.push('<');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: &serde_json::Value) -> String {
        let json = serde_json::to_string(value).unwrap();
        let escaped = escape_for_script(&json);
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(&back, value, "escaping changed the value");
        escaped
    }

    #[test]
    fn closing_script_tag_cannot_appear() {
        let value = serde_json::json!({
            "tokens": ["</script>", "<script>alert(1)</script>", "</SCRIPT >", "a</b"],
        });
        let escaped = round_trip(&value);
        assert!(!escaped.contains("</"), "{escaped}");
        assert!(escaped.contains(r"<\/script>"), "{escaped}");
        assert!(escaped.contains(r"<script>alert(1)<\/script>"), "{escaped}");
    }

    #[test]
    fn comment_openers_and_line_separators_are_escaped() {
        let value = serde_json::json!(["<!--<script>", "a\u{2028}b\u{2029}c", "<<!--", "<"]);
        let escaped = round_trip(&value);
        assert!(!escaped.contains("<!--"), "{escaped}");
        assert!(!escaped.contains('\u{2028}') && !escaped.contains('\u{2029}'));
        assert!(escaped.contains(r"\u2028") && escaped.contains(r"\u2029"));
    }

    #[test]
    fn backslashes_before_the_escape_stay_valid() {
        // A string ending in a backslash, then `</`: the escaped backslash
        // must not swallow the new escape.
        let value = serde_json::json!(["\\</script>", "\\", "\\\\</", "x\\<!--"]);
        round_trip(&value);
    }

    #[test]
    fn plain_text_is_untouched() {
        let json = r#"{"a":"b < c & d > e","n":[1,2.5,-3e-7],"s":"é 中文 🙂"}"#;
        assert_eq!(escape_for_script(json), json);
    }

    #[test]
    fn features_js_sets_the_global() {
        let js = features_js(r#"{"meta":{},"features":["</script>"]}"#);
        assert!(js.starts_with("window.SAESCOPE_DICTIONARY = {"));
        assert!(js.ends_with("};\n"));
        assert!(!js.contains("</"));
    }

    #[test]
    fn template_is_self_contained() {
        assert!(TEMPLATE.contains(r#"<script src="features.js"></script>"#));
        assert!(TEMPLATE.contains("feature-card"));
        for forbidden in ["http://", "https://", "fetch(", "//cdn", "<link "] {
            assert!(
                !TEMPLATE.contains(forbidden),
                "browser.html must not use `{forbidden}`"
            );
        }
    }
}
