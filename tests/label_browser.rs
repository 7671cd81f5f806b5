//! The static feature browser in a real browser: `write_browser` writes a tiny
//! dictionary, headless Chromium opens `index.html?q=...` from disk, and the
//! dumped DOM must hold exactly the cards the search finds, with hostile
//! tokens shown as text (escaped, never run). A screenshot is kept in
//! `target/label-browser-screenshot.png` for a person to look at.
//!
//! Needs Chromium (`apt-get install -y chromium`); without it these tests fail.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saescope::label::export::browser::write_browser;
use saescope::label::export::dictionary::{
    ActivationExample, DictionaryMeta, Diversity, ExplanationWord, FeatureEntry, QuantileExamples,
};

/// How long one Chromium run may take before it is killed.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

/// The token that would run script if the page put it into the DOM unescaped.
const HOSTILE_IMG: &str = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";

fn chromium() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(path) => path,
        None if Path::new("/usr/bin/chromium").is_file() => PathBuf::from("/usr/bin/chromium"),
        None => panic!(
            "Chromium not found (neither `chromium` on PATH nor /usr/bin/chromium): the browser \
             test needs it; run `apt-get install -y chromium` (scripts/test.sh does)"
        ),
    }
}

fn example(tokens: &[&str], values: &[f32]) -> ActivationExample {
    assert_eq!(tokens.len(), values.len());
    let (max_i, max_v) = values
        .iter()
        .copied()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, v)| if v > best.1 { (i, v) } else { best },
        );
    ActivationExample {
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        values: values.to_vec(),
        max_value: max_v,
        max_value_token_index: max_i,
    }
}

fn words(list: &[(&str, f64)]) -> Vec<ExplanationWord> {
    list.iter()
        .map(|&(word, mi)| ExplanationWord {
            word: word.to_string(),
            score: -mi * 0.5,
            mi,
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn entry(index: usize, explanation: &[(&str, f64)], label: Option<&str>) -> FeatureEntry {
    let bins = 24;
    FeatureEntry {
        index,
        model: "tiny-llama".into(),
        hook: "blocks.1.hook_resid_post".into(),
        label: label.map(str::to_string),
        explanation: words(explanation),
        baseline_logit_lens: strings(&["the", "of"]),
        baseline_top_tokens: strings(&["and", "a"]),
        pos_str: strings(&[" the", " of", " and"]),
        pos_values: vec![0.91, 0.52, 0.33],
        neg_str: strings(&[" not", "\n"]),
        neg_values: vec![-0.71, -0.44],
        frac_nonzero: 0.0123,
        max_act: 4.0,
        activations: vec![example(
            &["The", " cat", " sat", " on", " the", " mat", "."],
            &[0.0, 0.4, 1.2, 0.0, 0.1, 4.0, 0.0],
        )],
        quantile_examples: vec![QuantileExamples {
            quantile: [0.0, 0.5],
            lower: 0.1,
            upper: 1.0,
            examples: vec![example(&["a", " dog"], &[0.0, 0.6])],
        }],
        freq_hist_data_bar_values: (0..bins)
            .map(|i| 0.1 + 4.0 * i as f32 / bins as f32)
            .collect(),
        freq_hist_data_bar_heights: (0..bins)
            .map(|i| 2000 / (1 + i as u64 * i as u64))
            .collect(),
    }
}

fn entries() -> Vec<FeatureEntry> {
    let mut volcano = entry(
        7,
        &[
            ("volcano", 0.21),
            ("lava", 0.17),
            ("eruption", 0.09),
            ("ash", 0.04),
        ],
        Some("Volcanic eruptions & lava flows"),
    );
    volcano.baseline_logit_lens = strings(&["magma", "<b>"]);
    volcano.baseline_top_tokens = strings(&["lava", "erupt"]);
    volcano.pos_str = strings(&[" magma", " lava", " &amp;"]);
    volcano.activations = vec![
        example(
            &[
                "The",
                " volcano",
                " erupted",
                " <script>window.PWNED=1;document.body.remove()</script>",
                " &",
                " lava",
                "\n",
                "\"quoted\"",
                "\t",
                "",
                HOSTILE_IMG,
                "</script>",
                " flowed",
                ".",
            ],
            &[
                0.0, 2.5, 3.1, 0.2, 0.0, 4.0, 0.0, 0.3, 0.0, 0.0, 0.1, 0.0, 1.5, 0.0,
            ],
        ),
        example(
            &["Mount", " Etna", "'s", " lava", " fields"],
            &[0.5, 1.0, 0.0, 3.6, 0.8],
        ),
        example(
            &["Hot", " ash", " covered", " the", " town"],
            &[0.0, 2.2, 0.3, 0.0, 0.1],
        ),
    ];
    volcano.quantile_examples = vec![
        QuantileExamples {
            quantile: [0.0, 0.5],
            lower: 0.05,
            upper: 1.0,
            examples: vec![example(&["the", " crater", " rim"], &[0.0, 0.9, 0.2])],
        },
        QuantileExamples {
            quantile: [0.5, 0.9],
            lower: 1.0,
            upper: 3.0,
            examples: vec![
                example(&["a", " dormant", " volcano"], &[0.0, 0.4, 2.7]),
                example(&["smoke", " rose"], &[1.3, 0.2]),
            ],
        },
    ];
    vec![
        entry(2, &[("number", 0.3), ("digits", 0.1)], Some("Numbers")),
        volcano,
        entry(11, &[("cat", 0.25), ("kitten", 0.12)], None),
        entry(
            40,
            &[("river", 0.19), ("bank", 0.02)],
            Some("Rivers and banks"),
        ),
    ]
}

fn meta() -> DictionaryMeta {
    let diversity = |d: f64, l: f64, n: usize| Diversity {
        diversity: d,
        lexical: l,
        distinct_words: n,
    };
    DictionaryMeta {
        model: "tiny-llama".into(),
        hook: "blocks.1.hook_resid_post".into(),
        sae: "tests/fixtures/sae <demo> & co".into(),
        d_sae: 64,
        corpus: "synthetic".into(),
        tokens: 123_456,
        directions: "encoder".into(),
        alpha: 1.0,
        beta: 0.5,
        diversity_mi: diversity(0.41, 0.05, 230),
        diversity_logit_lens: diversity(0.12, 0.31, 80),
        diversity_top_tokens: diversity(0.09, 0.44, 61),
        seconds: 12.5,
        hardware: "cpu".into(),
    }
}

/// A dictionary folder holding the browser.
fn dictionary() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_browser(dir.path(), &entries(), &meta()).unwrap();
    dir
}

fn page_url(dir: &Path, query: &str) -> String {
    format!("file://{}/index.html{query}", dir.display())
}

/// Runs headless Chromium with `args` then `url`, killed after
/// [`CHROMIUM_DEADLINE`]; returns its stdout.
fn run_chromium(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        // Its own process group, so a hung browser is killed with its helpers.
        .process_group(0)
        .spawn()
        .expect("cannot start chromium");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHROMIUM_DEADLINE {
            // SAFETY: signals the process group this test started.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_DEADLINE:?} on {url}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {url}; stderr:\n{stderr}"
    );
    std::fs::read_to_string(&out_path).unwrap()
}

/// The DOM of the page at `url` after its script ran, up to its first
/// `<script>` element: the rendered content without the page's own source
/// (which mentions the markup it makes).
fn dump_dom(url: &str) -> String {
    let dom = run_chromium(&["--dump-dom".to_string()], url);
    assert!(
        dom.contains("</html>"),
        "chromium returned no page for {url}:\n{dom}"
    );
    let end = dom
        .find("<script")
        .unwrap_or_else(|| panic!("the page lost its scripts:\n{dom}"));
    dom[..end].to_string()
}

fn card(index: usize) -> String {
    format!("id=\"feature-{index}\"")
}

#[test]
fn search_by_word_shows_only_matching_cards_with_tokens_escaped() {
    let dir = dictionary();
    for query in ["?q=volcano", "#q=Volcano"] {
        let dom = dump_dom(&page_url(dir.path(), query));
        assert!(
            dom.contains(&card(7)),
            "no card of the volcano feature for {query}:\n{dom}"
        );
        for other in [2, 11, 40] {
            assert!(
                !dom.contains(&card(other)),
                "feature {other} shown for {query}"
            );
        }
        assert_eq!(dom.matches("class=\"feature-card\"").count(), 1, "{dom}");
        assert!(dom.contains("1 feature matches"), "no result count:\n{dom}");
        // Hostile tokens are text, never markup, and nothing they hold ran.
        assert!(dom.contains("&lt;script&gt;window.PWNED=1"), "{dom}");
        assert!(dom.contains("&lt;/script&gt;"), "{dom}");
        assert!(dom.contains("&lt;img src=x onerror="), "{dom}");
        assert!(!dom.contains("<img"), "a token became an element:\n{dom}");
        assert!(
            !dom.contains("data-pwned=\"1\""),
            "a token's script ran:\n{dom}"
        );
        assert!(
            dom.contains("<main>"),
            "the page was removed by a token's script"
        );
        assert!(
            dom.contains(" &amp;"),
            "the `&` token is not escaped:\n{dom}"
        );
        assert!(
            dom.contains(" &amp;amp;"),
            "a `&amp;` token was not double-escaped"
        );
        assert!(dom.contains("&lt;b&gt;"), "{dom}");
        // The header shows the dictionary's figures, escaped.
        assert!(dom.contains("tiny-llama") && dom.contains("blocks.1.hook_resid_post"));
        assert!(
            dom.contains("tests/fixtures/sae &lt;demo&gt; &amp; co"),
            "{dom}"
        );
        assert!(
            dom.contains("0.41") && dom.contains("230"),
            "no diversity figures"
        );
        // Histogram and examples are drawn.
        assert!(dom.contains("<svg class=\"hist\""), "no histogram");
        assert!(
            dom.contains("Volcanic eruptions &amp; lava flows"),
            "no label"
        );
    }
}

#[test]
fn search_by_index_and_no_query() {
    let dir = dictionary();
    let dom = dump_dom(&page_url(dir.path(), "?q=2"));
    assert!(dom.contains(&card(2)), "no card of feature 2:\n{dom}");
    for other in [7, 11, 40] {
        assert!(
            !dom.contains(&card(other)),
            "feature {other} shown for ?q=2"
        );
    }
    // A word found only in a label; then no query at all lists every feature.
    let dom = dump_dom(&page_url(dir.path(), "?q=rivers"));
    assert!(dom.contains(&card(40)) && !dom.contains(&card(7)), "{dom}");
    let dom = dump_dom(&page_url(dir.path(), ""));
    for index in [2, 7, 11, 40] {
        assert!(
            dom.contains(&card(index)),
            "feature {index} missing with no query"
        );
    }
    let dom = dump_dom(&page_url(dir.path(), "?q=nosuchword"));
    assert!(!dom.contains("class=\"feature-card\"") && dom.contains("no feature matches"));
}

#[test]
fn screenshot() {
    let dir = dictionary();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let png = target.join("label-browser-screenshot.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1600".to_string(),
            "--hide-scrollbars".to_string(),
        ],
        &page_url(dir.path(), "?q=volcano"),
    );
    let size = std::fs::metadata(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()))
        .len();
    assert!(
        size > 10_000,
        "screenshot {} is only {size} bytes",
        png.display()
    );
    let head = std::fs::read(&png).unwrap();
    assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}
